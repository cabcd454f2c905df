"""``covidct pacs serve`` and ``covidct pacs status``: the DICOM node.

Settings come from the ``COVIDCT_PACS_*`` variables (``.env.example``); the node itself is
imported inside the commands, so ``covidct --help`` stays light.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import fail

pacs_app = typer.Typer(
    help="The DICOM node: CT series in over DICOM, SR and heatmaps back into the study.",
    no_args_is_help=True,
)


@pacs_app.command()
def serve() -> None:
    """Run the DICOM node (C-STORE SCP, series completion, results) until SIGTERM or Ctrl-C.

    Settings: COVIDCT_PACS_* variables (see .env.example).
    """
    from dicomnode.pipeline import serve as run_node
    from dicomnode.settings import load_settings

    run_node(load_settings())


@pacs_app.command()
def status(
    url: Annotated[
        str | None,
        typer.Option(help="The node's status URL (default: from COVIDCT_PACS_HOST/HTTP_PORT)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Print the node's /status: series states, counts, outbox depth, last errors."""
    import httpx

    from covidct.addresses import host_port

    if url is None:
        from dicomnode.settings import load_settings

        settings = load_settings()
        url = f"http://{host_port(settings.host, settings.http_port)}/status"
    try:
        r = httpx.get(url, timeout=timeout)
        r.raise_for_status()
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        fail(f"{url}: {e}")
    print(json.dumps(body, indent=2))
