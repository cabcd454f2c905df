"""Triton addresses as every part names them: one ``HOST:PORT``, a comma-separated list, or
``dns:NAME:PORT`` (every address NAME resolves to: a Kubernetes headless Service).

The gateway balances over them (``gateway.replicas``, re-resolving at each probe); a redeploy
drives each of them (``serving.control.TritonFleet``, resolving once at its start).
"""

from __future__ import annotations

import socket

DNS_PREFIX = "dns:"


def parse_targets(url: str) -> tuple[list[str], tuple[str, int] | None]:
    """Fixed addresses, or the (name, port) to resolve for ``dns:NAME:PORT``.

    Raises:
        ValueError: nothing usable, with what was expected.
    """
    if url.startswith(DNS_PREFIX):
        host, _, port = url.removeprefix(DNS_PREFIX).lstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Triton address {url!r}: expected dns:NAME:PORT")
        return [], (host, int(port))
    addresses = [a.strip() for a in url.split(",") if a.strip()]
    if not addresses:
        raise ValueError("the Triton address names no HOST:PORT")
    return addresses, None


def addresses_of(infos: list[tuple], port: int) -> list[str]:
    """``HOST:PORT`` for each distinct address in a ``getaddrinfo`` answer, sorted."""
    return sorted({f"{info[4][0]}:{port}" for info in infos})


def resolve_targets(url: str) -> list[str]:
    """Every address ``url`` names now (blocking DNS lookup for ``dns:``).

    Raises:
        ValueError: malformed, or the name resolves to nothing.
    """
    addresses, dns = parse_targets(url)
    if dns is None:
        return addresses
    host, port = dns
    try:
        found = addresses_of(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), port)
    except OSError as e:
        raise ValueError(f"cannot resolve {host}: {e}") from e
    if not found:
        raise ValueError(f"{host} resolves to no address")
    return found
