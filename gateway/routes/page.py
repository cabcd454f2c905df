"""The web page at ``/`` (``gateway/static/index.html``), which calls the predict endpoint."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter()

STATIC = Path(__file__).parent.parent / "static"


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page: drop a slice, see the label, probabilities and heatmap."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
