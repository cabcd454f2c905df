"""``covidct export``: a run as the next version of its Triton model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import DEFAULT_REPOSITORY, RepositoryOpt, err
from export.tritonconfig import TritonOptions

TRITON_DEFAULTS = TritonOptions()

app = typer.Typer()


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Option(help="Run directory from covidct train.")],
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    target: Annotated[
        str,
        typer.Option(
            help="auto (the default): the CPU target this machine's instruction sets call for "
            "(export/openvino.py: default_cpu_target; OpenVINO bf16 with AMX or AVX512_BF16, "
            "falling back to fp32 when bf16 fails its gate; OpenVINO fp32 elsewhere); cpu "
            "(Python backend + ONNX Runtime), openvino (Python backend + OpenVINO, CPU), "
            "onnx-trt (ONNX Runtime + TensorRT, GPU) or tensorrt-plan (trtexec engine, GPU). "
            "--int8 alone means the cpu target, --precision alone the openvino target."
        ),
    ] = "auto",
    precision: Annotated[
        str | None,
        typer.Option(
            help="openvino target: fp32 (default), bf16 (CPUs with AMX or AVX512_BF16) or int8 "
            "(the static QDQ model of --int8, needs --calibration-data); bf16 and int8 are "
            "gated against fp32 like --int8."
        ),
    ] = None,
    int8: Annotated[bool, typer.Option(help="Static INT8 (QDQ) for the cpu target.")] = False,
    calibration_data: Annotated[
        Path | None, typer.Option(help="COVIDx-CT folder whose val slices calibrate int8.")
    ] = None,
    agreement_data: Annotated[
        Path | None,
        typer.Option(
            help="COVIDx-CT folder whose test slices judge --int8 or bf16 agreement with "
            "fp32 (default: --calibration-data for --int8, the packaged real slices for bf16)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Largest batch Triton forms.")
    ] = TRITON_DEFAULTS.max_batch_size,
    dynamic_batching: Annotated[
        bool, typer.Option(help="Dynamic batching (default: what `covidct bench settings` chose).")
    ] = TRITON_DEFAULTS.dynamic_batching,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batcher wait.")
    ] = TRITON_DEFAULTS.max_queue_delay_us,
    instances: Annotated[
        int, typer.Option(help="Model instances.")
    ] = TRITON_DEFAULTS.instance_count,
    versions_kept: Annotated[
        int,
        typer.Option(
            help="Versions Triton serves (the latest N): more than 2 to serve several "
            "targets or precisions of one model side by side."
        ),
    ] = TRITON_DEFAULTS.versions_kept,
) -> None:
    """Export a run as the next version of its Triton model: ONNX, parity check, config."""
    from export.pipeline import export_auto, export_run

    chosen = None
    if target == "auto" and (int8 or precision is not None):
        target = "cpu" if int8 else "openvino"
    serving = TritonOptions(  # auto: export_auto sets the target and precision
        target="cpu" if target == "auto" else target,
        precision=precision or "fp32",
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instances,
        versions_kept=versions_kept,
    )
    # A refused export (ExportError, RepositoryError, TrainError) is one message (cli.main).
    if target == "auto":
        manifest, chosen = export_auto(run, repository, serving, calibration_data, agreement_data)
        err.print(f"target auto -> {chosen}", soft_wrap=True)
    else:
        manifest = export_run(
            run,
            repository,
            serving,
            int8=int8,
            calibration_data=calibration_data,
            agreement_data=agreement_data,
        )
    print(json.dumps(summary(manifest, chosen)))


def summary(manifest: dict[str, Any], chosen: str | None = None) -> dict[str, Any]:
    """What ``covidct export`` prints of the manifest: version, target, checks, the choice."""
    keys = ("version", "target", "parity", "export_seconds", "int8", "openvino")
    return {k: manifest[k] for k in keys if k in manifest} | ({"chosen": chosen} if chosen else {})
