"""``python -m gateway``: the gateway alone, served as ``covidct serve`` serves it (uvicorn with
the bounded httptools protocol and uvloop, a graceful drain on SIGTERM), against the Triton at
``COVIDCT_TRITON_URL``. The gateway image's entry point; every setting is a ``COVIDCT_*``
variable (gateway/settings.py), the listening address ``COVIDCT_HOST``/``COVIDCT_PORT``."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import create_app
from gateway.protocol import GRACE_S, UVICORN_OPTIONS
from gateway.settings import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        **UVICORN_OPTIONS,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=GRACE_S,
    )


if __name__ == "__main__":
    main()
