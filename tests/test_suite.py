"""The suite's own plumbing: slow fixtures are shared only if xdist groups hold."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("ci-run")
def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup`` the group must be in the node id, or the scheduler spreads
    the "ci-run" tests over workers and each trains the CI model again."""
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@ci-run"), request.node.nodeid
