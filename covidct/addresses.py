"""Triton addresses as every part names them: one ``HOST:PORT``, a comma-separated list, or
``dns:NAME:PORT`` (every address NAME resolves to: a Kubernetes headless Service).

The gateway balances over them (``gateway.replicas``, re-resolving at each probe); a redeploy
drives each of them (``rollout.control.TritonFleet``, resolving once at its start).
"""

from __future__ import annotations

import socket

DNS_PREFIX = "dns:"

#: Where local runs and tests listen: loopback only (containers bind 0.0.0.0 themselves).
LOCALHOST = "127.0.0.1"
#: Triton's standard ports (as in NVIDIA's images): HTTP/REST, gRPC, Prometheus metrics.
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
#: The gateway's port, and the Triton address every client defaults to.
GATEWAY_PORT = 8080
DEFAULT_TRITON_URL = f"{LOCALHOST}:{TRITON_GRPC_PORT}"
DEFAULT_GATEWAY_URL = f"http://{LOCALHOST}:{GATEWAY_PORT}"


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` a client can dial: a wildcard bind address becomes loopback, IPv6 bracketed."""
    host = LOCALHOST if host in ("0.0.0.0", "") else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
