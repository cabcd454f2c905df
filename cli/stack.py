"""``covidct triton``, ``covidct serve`` and ``covidct predict``: run and query the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import DEFAULT_REPOSITORY, RepositoryOpt, err, fail
from covidct.addresses import (
    DEFAULT_GATEWAY_URL,
    GATEWAY_PORT,
    LOCALHOST,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
)

app = typer.Typer()


@app.command()
def triton(
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = TRITON_GRPC_PORT,
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = TRITON_HTTP_PORT,
    metrics_port: Annotated[int, typer.Option(help="Metrics port.")] = TRITON_METRICS_PORT,
    address: Annotated[
        str, typer.Option(help="Address the ports listen on (0.0.0.0 only in a container).")
    ] = LOCALHOST,
    model_control: Annotated[str, typer.Option(help="explicit, poll or none.")] = "poll",
    log_file: Annotated[
        Path | None,
        typer.Option(help="Server log (default: beside the repository; '-': this stdout)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
) -> None:
    """Run the real tritonserver on this machine until Ctrl-C or SIGTERM."""
    from serving.server import TritonServer, run_until_stopped

    server = TritonServer(
        repository,
        grpc_port,
        http_port,
        metrics_port,
        model_control,
        log_file=log_file,
        address=address,
    )
    code = run_until_stopped(server, timeout, say=lambda line: err.print(line, soft_wrap=True))
    if code:
        raise typer.Exit(code)


@app.command()
def serve(
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    host: Annotated[str, typer.Option(help="Gateway address.")] = LOCALHOST,
    port: Annotated[int, typer.Option(help="Gateway port.")] = GATEWAY_PORT,
    grpc_port: Annotated[int, typer.Option(help="Triton gRPC port.")] = TRITON_GRPC_PORT,
    http_port: Annotated[int, typer.Option(help="Triton HTTP port.")] = TRITON_HTTP_PORT,
    metrics_port: Annotated[int, typer.Option(help="Triton metrics port.")] = TRITON_METRICS_PORT,
    triton_replicas: Annotated[
        int,
        typer.Option(
            min=1, help="Tritonservers to balance over (replica i on the ports + 10 x i)."
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Gateway processes on the one port; they serve one version together."
        ),
    ] = 1,
) -> None:
    """Start Triton and the gateway (building a demo model first when there is none)."""
    from cli.launch import default_demo_dir
    from cli.launch import serve as run_serve

    # A Triton that does not start, or a failed demo build, is one message (cli.main).
    run_serve(
        repository,
        host,
        port,
        grpc_port,
        http_port,
        metrics_port,
        default_demo_dir(),
        triton_replicas,
        workers,
    )


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM slices.")],
    url: Annotated[str, typer.Option(help="Gateway URL.")] = DEFAULT_GATEWAY_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COVIDCT_API_KEY", help="X-API-Key, when the gateway needs one."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 60.0,
) -> None:
    """Send each file to the gateway; print one JSON result per file (exit 1 if any failed)."""
    import httpx

    headers = {"x-api-key": api_key} if api_key else {}
    failed = 0
    with httpx.Client(base_url=url, timeout=timeout, headers=headers) as client:
        for file in files:
            try:
                data = file.read_bytes()
                r = client.post("/v1/predict", files={"file": (file.name, data)})
                body = r.json()
            except OSError as e:
                body, r = {"status": 0, "detail": f"cannot read: {e.strerror}"}, None
            except (httpx.HTTPError, ValueError) as e:
                fail(f"{url}: {e}")
            ok = r is not None and r.status_code == 200
            failed += not ok
            print(
                json.dumps(
                    {"file": str(file), **body} if ok else {"file": str(file), "error": body}
                )
            )
    if failed:
        raise typer.Exit(1)
