"""The gateway's admin endpoint, as the redeploy drives it (step 2 and 3 of the protocol in
``rollout.control``)."""

from __future__ import annotations

import json
import time
from typing import Any

from rollout.control import DeployError


class GatewayAdmin:
    """The gateway's admin endpoint (``/admin/v1/serving``)."""

    def __init__(self, url: str, admin_key: str | None, timeout_s: float = 30.0) -> None:
        import httpx

        headers = {"x-admin-key": admin_key} if admin_key else {}
        self._httpx = httpx
        self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)
        self.url = url

    def _call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = self.client.request(method, "/admin/v1/serving", json=body)
        except self._httpx.HTTPError as e:
            raise DeployError(f"gateway at {self.url} is not reachable: {e}") from e
        if r.status_code != 200:
            try:
                detail = r.json().get("detail", r.text)
            except json.JSONDecodeError:
                detail = r.text
            raise DeployError(f"gateway answered {r.status_code}: {detail}")
        return dict(r.json())

    def status(self) -> dict[str, Any]:
        """The serving version, requests in flight and counts since the last switch."""
        return self._call("GET")

    def switch(self, version: int) -> dict[str, Any]:
        """Serve ``version`` from the next request (every process of a shared deployment)."""
        return self._call("POST", {"version": str(version)})

    def drain(self, version: int, timeout_s: float) -> float:
        """Wait until no request is in flight on ``version``; returns the seconds waited."""
        started = time.monotonic()
        while True:
            in_flight = int(self.status()["in_flight"].get(str(version), 0))
            if in_flight == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise DeployError(
                    f"version {version} still has {in_flight} requests in flight "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(0.1)

    def close(self) -> None:
        """Close the HTTP connection."""
        self.client.close()
