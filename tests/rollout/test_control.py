"""TritonFleet: how a redeploy names and reaches every Triton replica (no server needed: the
addresses refuse connections; tests/integration/test_scaleout.py drives three real ones)."""

from __future__ import annotations

import socket

import pytest

from rollout.control import DeployError, TritonFleet


def _closed_ports(n: int) -> list[int]:
    """Ports nothing listens on (bound, then released)."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def test_every_unreachable_replica_is_named_once() -> None:
    a, b = (f"127.0.0.1:{p}" for p in _closed_ports(2))
    fleet = TritonFleet(f"{a}, {b}", "covidct")
    assert [r.url for r in fleet] == [a, b]
    with pytest.raises(DeployError, match="failed on 2 of 2 replicas") as e:
        fleet.ready_versions()
    message = str(e.value)
    for address in (a, b):
        assert f"Triton at {address} is not reachable" in message
        assert f"{address}: Triton at" not in message  # not named twice
    assert fleet.ready_anywhere() == []  # an undo skips what it cannot reach


def test_a_dns_name_is_every_address_it_resolves_to() -> None:
    (port,) = _closed_ports(1)
    fleet = TritonFleet(f"dns:localhost:{port}", "covidct")
    assert f"127.0.0.1:{port}" in [r.url for r in fleet]


@pytest.mark.parametrize(
    ("url", "why"),
    [("dns:no-such-host.invalid:8001", "cannot resolve"), (" , ", "names no HOST:PORT")],
)
def test_an_unusable_address_is_a_deploy_error(url: str, why: str) -> None:
    with pytest.raises(DeployError, match=why):
        TritonFleet(url, "covidct")
