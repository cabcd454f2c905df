"""Admin endpoints: which version serves, and the atomic switch a redeploy uses.

Protected by ``X-Admin-Key`` (``COVIDCT_ADMIN_KEY``), separate from the API key; without
that setting the endpoints answer 403 and say how to enable them.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.deps import state_of
from gateway.errors import AdminDisabled, AdminUnauthorized
from gateway.schemas import problems


def require_admin(request: Request) -> None:
    """Dependency: the admin key must be configured and sent."""
    key = state_of(request).settings.admin_key
    if key is None or not key.get_secret_value():  # an empty key must never open the door
        raise AdminDisabled("admin endpoints are disabled: set COVIDCT_ADMIN_KEY to enable them")
    supplied = request.headers.get("x-admin-key", "").encode()
    if not hmac.compare_digest(supplied, key.get_secret_value().encode()):
        raise AdminUnauthorized("send the admin key in X-Admin-Key")


router = APIRouter(
    prefix="/admin/v1",
    dependencies=[Depends(require_admin)],
    responses=problems(401, 403, 409, 503),
)


class SwitchRequest(BaseModel):
    version: str = Field(pattern=r"^[0-9]{1,9}$", description="Triton version to serve")


class ServingStatus(BaseModel):
    model: str
    version: str | None
    previous_version: str | None
    switched_at: float | None = Field(description="Unix time of the last switch")
    in_flight: dict[str, int] = Field(description="requests being answered, per version")
    since_switch: dict[str, Any] = Field(description="requests and model errors since then")
    triton_versions: list[dict[str, Any]]
    gateways: list[dict[str, Any]] = Field(
        default=[],
        description="with COVIDCT_SERVING_DIR: every live gateway process (the figures above "
        "are their sums)",
    )


async def _status(request: Request) -> ServingStatus:
    gw = state_of(request)
    await gw.serving.current()
    status = await gw.shared.summed_status() if gw.shared is not None else gw.serving.status()
    return ServingStatus(
        model=gw.settings.model_name,
        **status,
        triton_versions=await gw.backend.versions(),
    )


@router.get("/serving", response_model=ServingStatus)
async def serving(request: Request) -> ServingStatus:
    """The version new requests go to, in-flight requests per version, errors since switch."""
    return await _status(request)


@router.post("/serving", response_model=ServingStatus)
async def switch(request: Request, body: SwitchRequest) -> ServingStatus:
    """Serve ``version`` from now on (it must be ready in Triton and take the same input);
    with COVIDCT_SERVING_DIR every gateway process switches, or none does."""
    gw = state_of(request)
    if gw.shared is not None:
        await gw.shared.publish(body.version)
    else:
        await gw.serving.switch(body.version)
    return await _status(request)
