"""The ``covidct`` command line. Thin: every command calls the library and reports errors
as one clear message naming the file (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from covidct.config import ModelSpec, SpecError, TrainConfig
from covidct.preprocessing import Box, PreprocessingError, preprocess_bytes
from export.repository import ServingConfig

SERVING_DEFAULTS = ServingConfig()
TRAIN_DEFAULTS = TrainConfig()

if TYPE_CHECKING:
    from rollout.deployment import StepEvent

app = typer.Typer(
    help="COVID-19 chest CT slice classification: data, training, export, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="COVIDx-CT folders: check, synthesize, prepare the cache.", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks whose output goes into BENCHMARKS.md.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True, highlight=False, emoji=False)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def parse_box(text: str) -> Box:
    parts = text.replace(" ", "").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        fail(f"--box {text!r}: expected four integers xmin,ymin,xmax,ymax")
    return (values[0], values[1], values[2], values[3])


@app.command()
def preprocess(
    file: Annotated[Path, typer.Argument(help="PNG, JPEG or DICOM slice.")],
    box: Annotated[
        str | None,
        typer.Option(
            help="Crop box xmin,ymin,xmax,ymax (COVIDx-CT convention, max exclusive); "
            "default: the automatic body box, as at serving."
        ),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Output size S (default: 224).")] = None,
    spec: Annotated[Path | None, typer.Option(help="Take S from this model_spec.json.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the S x S model input here (PNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Show what the model will see for FILE: decode, window, crop, resize."""
    if size is not None and spec is not None:
        fail("give --size or --spec, not both")
    try:
        model_spec = ModelSpec.load(spec) if spec else ModelSpec(image_size=size or 224)
    except SpecError as e:
        fail(str(e))
    try:
        data = file.read_bytes()
    except OSError as e:
        fail(f"{file}: cannot read: {e.strerror}")
    try:
        result = preprocess_bytes(data, model_spec.image_size, box=parse_box(box) if box else None)
    except PreprocessingError as e:
        fail(f"{file}: {e}")
    if out is not None:
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.image[:, :, 0]).save(out)
    summary = {
        "file": str(file),
        "source": result.source,
        "original_shape": list(result.original_shape),
        "box": list(result.box),
        "box_policy": "given" if box else "auto-body",
        "size": model_spec.image_size,
        "window": list(result.window),
        "out": str(out) if out else None,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>15}: {value}")


@data_app.command("check")
def data_check(
    directory: Annotated[Path, typer.Argument(help="COVIDx-CT folder.")],
) -> None:
    """Validate a COVIDx-CT folder: one line of class counts per split, then every problem."""
    from covidct.dataset import read_covidx

    ds = read_covidx(directory)
    for split in ds.splits:
        print(ds.summary_line(split))
    if ds.problems:
        print(f"{len(ds.problems)} problem(s):")
        for problem in ds.problems:
            print(f"  {problem}")
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (COVIDx-CT layout).")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients.")] = 30,
    slices_per_patient: Annotated[int, typer.Option(min=1, help="Slices per patient.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    size: Annotated[int, typer.Option(min=128, max=2048, help="Slice size in pixels.")] = 512,
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = os.cpu_count() or 1,
) -> None:
    """Generate synthetic axial chest CT (Normal, Pneumonia, COVID-19) as a COVIDx-CT folder."""
    from rich.progress import Progress

    from training.synth import synthesize

    total = patients * slices_per_patient
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("rendering slices", total=total)
        counts = synthesize(
            out,
            patients,
            slices_per_patient,
            seed,
            size,
            workers,
            progress=lambda n: progress.advance(task, n),
        )
    print(
        f"wrote {sum(counts.values())} synthetic slices to {out}: "
        + ", ".join(f"{k}={v}" for k, v in counts.items())
    )


@data_app.command("prepare")
def data_prepare(
    data: Annotated[Path, typer.Option(help="COVIDx-CT folder.")],
    out: Annotated[Path, typer.Option(help="Cache folder.")],
    size: Annotated[int, typer.Option(help="Model input size S.")] = 224,
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = os.cpu_count() or 1,
) -> None:
    """Preprocess every slice once into memory-mapped uint8 shards (resumable)."""
    from rich.progress import Progress

    from covidct.dataset import SPLITS, DatasetError
    from training.cache import CacheError, prepare_cache

    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("preprocessing slices", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            manifest = prepare_cache(data, out, size, workers=workers, progress=report)
    except (DatasetError, CacheError) as e:
        fail(str(e))
    counts = {k: manifest["splits"][k]["count"] for k in SPLITS if k in manifest["splits"]}
    print(f"cache {out} ready (S={size}): " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="COVIDx-CT folder (the cache is prepared or reused).")],
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    backbone: Annotated[
        str,
        typer.Option(
            help="densenet201, densenet121, densenet169, vgg16, vgg19, resnet101 or resnet152."
        ),
    ] = "densenet201",
    image_size: Annotated[int, typer.Option(help="Model input size S.")] = 224,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (from scratch: all epochs).")] = 3,
    head_epochs: Annotated[
        int, typer.Option(help="Head-only epochs before fine-tuning (pretrained weights only).")
    ] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 16,
    weights: Annotated[
        str,
        typer.Option(help="imagenet, none (from scratch) or a .weights.h5 file for the backbone."),
    ] = "imagenet",
    unfreeze: Annotated[
        int,
        typer.Option(
            help=(
                "Fine-tune the last N entries of the backbone's layer list (keras.applications "
                "order, every layer type counted: conv, BatchNorm, activation, concat, pooling). "
                "BatchNorm layers among them stay frozen and in inference mode. 0: head only; "
                "-1: the whole backbone. Ignored with --weights none (everything trains)."
            )
        ),
    ] = 30,
    learning_rate: Annotated[float, typer.Option(help="Head / from-scratch learning rate.")] = 1e-3,
    fine_tune_learning_rate: Annotated[float, typer.Option(help="Fine-tuning rate.")] = 1e-4,
    dropout: Annotated[float, typer.Option(help="Dropout on pooled features.")] = 0.3,
    augment: Annotated[bool, typer.Option(help="Augment the training split.")] = True,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips (with --augment).")] = True,
    rotation: Annotated[
        float, typer.Option(help="Random rotation up to +-degrees (with --augment; 0: off).")
    ] = TRAIN_DEFAULTS.rotation_degrees,
    zoom: Annotated[
        float, typer.Option(help="Random zoom up to +-this fraction (0: off).")
    ] = TRAIN_DEFAULTS.zoom,
    shift: Annotated[
        float, typer.Option(help="Random shift up to +-this fraction of the size (0: off).")
    ] = TRAIN_DEFAULTS.shift,
    brightness: Annotated[
        float, typer.Option(help="Random brightness up to +-this fraction of 255 (0: off).")
    ] = TRAIN_DEFAULTS.brightness,
    contrast: Annotated[
        float, typer.Option(help="Random contrast up to +-this fraction (0: off).")
    ] = TRAIN_DEFAULTS.contrast,
    balance: Annotated[
        str, typer.Option(help="class-weights, sampling (balanced batches) or none.")
    ] = "class-weights",
    mixed_precision: Annotated[bool, typer.Option(help="float16 compute (GPUs).")] = False,
    strategy: Annotated[
        str, typer.Option(help="default, mirrored (all local GPUs) or multiworker (TF_CONFIG).")
    ] = "default",
    seed: Annotated[int, typer.Option(help="Seed (deterministic on CPU).")] = 0,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs).")] = 3,
    calibrate: Annotated[bool, typer.Option(help="Fit a temperature on val.")] = True,
    auto_split: Annotated[
        str,
        typer.Option(
            help=(
                "For folders without train/val label files: none, patient (patient-disjoint "
                "70/15/15) or slice (smoke tests only: leaks patients)."
            )
        ),
    ] = "none",
    name: Annotated[str, typer.Option(help="Model name (Triton model name).")] = "covidct",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache root (default $COVIDCT_CACHE_DIR or ~/.cache/covidct)."),
    ] = None,
) -> None:
    """Fine-tune a Keras backbone on a COVIDx-CT folder into a servable run directory."""
    from covidct.dataset import DatasetError
    from training.cache import CacheError
    from training.data import SplitError
    from training.model import ModelError
    from training.train import TrainError
    from training.train import train as run_training

    try:
        cfg = TrainConfig(
            backbone=backbone,
            image_size=image_size,
            weights=weights,
            unfreeze=unfreeze,
            head_epochs=head_epochs,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            fine_tune_learning_rate=fine_tune_learning_rate,
            dropout=dropout,
            augment=augment,
            flip=flip,
            rotation_degrees=rotation,
            zoom=zoom,
            shift=shift,
            brightness=brightness,
            contrast=contrast,
            balance=balance,
            mixed_precision=mixed_precision,
            strategy=strategy,
            seed=seed,
            patience=patience,
            calibrate=calibrate,
            auto_split=auto_split,
            model_name=name,
        )
        # Progress bars on a terminal; one line per epoch in logs and CI.
        verbose = "auto" if sys.stdout.isatty() else 2
        results = run_training(data, out, cfg, resume=resume, cache_root=cache_dir, verbose=verbose)
    except (SpecError, DatasetError, CacheError, SplitError, ModelError, TrainError) as e:
        fail(str(e))
    print("\n\n".join(results["tables"]))
    print(f"run written to {out} (SavedModel, model card, metrics)")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Option(help="Run directory (from covidct train).")],
    data: Annotated[Path, typer.Option(help="COVIDx-CT folder.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for metrics.json and the figures (default: RUN/eval-SPLIT)."),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache root.")] = None,
) -> None:
    """Evaluate a run's SavedModel: accuracy, per-class sensitivity/PPV/specificity/F1, AUC."""
    from covidct.dataset import DatasetError
    from training.cache import CacheError
    from training.report import evaluate_run
    from training.train import TrainError

    if split not in ("train", "val", "test"):
        fail(f"--split {split!r}: choose train, val or test")
    try:
        print(evaluate_run(run, data, split, out, cache_dir))
    except (DatasetError, CacheError, TrainError, ValueError, OSError) as e:
        fail(str(e))


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Option(help="Run directory from covidct train.")],
    repository: Annotated[Path, typer.Option(help="Triton model repository.")] = Path(
        "model_repository"
    ),
    target: Annotated[
        str,
        typer.Option(
            help="cpu (Python backend + ONNX Runtime, local "
            "server), onnx-trt (ONNX Runtime + TensorRT, GPU) or "
            "tensorrt-plan (trtexec engine, GPU)."
        ),
    ] = "cpu",
    int8: Annotated[bool, typer.Option(help="Static INT8 (QDQ) for the cpu target.")] = False,
    calibration_data: Annotated[
        Path | None, typer.Option(help="COVIDx-CT folder whose val slices calibrate --int8.")
    ] = None,
    agreement_data: Annotated[
        Path | None,
        typer.Option(
            help="COVIDx-CT folder whose test slices judge --int8 agreement with fp32 "
            "(default: --calibration-data)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Largest batch Triton forms.")
    ] = SERVING_DEFAULTS.max_batch_size,
    dynamic_batching: Annotated[
        bool, typer.Option(help="Dynamic batching (default: what `covidct bench settings` chose).")
    ] = SERVING_DEFAULTS.dynamic_batching,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batcher wait.")
    ] = SERVING_DEFAULTS.max_queue_delay_us,
    instances: Annotated[
        int, typer.Option(help="Model instances.")
    ] = SERVING_DEFAULTS.instance_count,
) -> None:
    """Export a run as the next version of its Triton model: ONNX, parity check, config."""
    from export.onnx import ExportError
    from export.pipeline import export_run
    from export.repository import RepositoryError, ServingConfig
    from training.train import TrainError

    try:
        serving = ServingConfig(
            target=target,
            max_batch_size=max_batch_size,
            dynamic_batching=dynamic_batching,
            max_queue_delay_us=max_queue_delay_us,
            instance_count=instances,
        )
        manifest = export_run(
            run,
            repository,
            serving,
            int8=int8,
            calibration_data=calibration_data,
            agreement_data=agreement_data,
        )
    except (ExportError, RepositoryError, TrainError) as e:
        fail(str(e))
    print(
        json.dumps(
            {
                k: manifest[k]
                for k in ("version", "target", "parity", "export_seconds")
                if k in manifest
            }
            | ({"int8": manifest["int8"]} if "int8" in manifest else {})
        )
    )


@app.command()
def triton(
    repository: Annotated[Path, typer.Option(help="Triton model repository.")] = Path(
        "model_repository"
    ),
    grpc_port: Annotated[int, typer.Option(help="gRPC port on 127.0.0.1.")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1.")] = 8000,
    metrics_port: Annotated[int, typer.Option(help="Metrics port on 127.0.0.1.")] = 8002,
    model_control: Annotated[str, typer.Option(help="explicit, poll or none.")] = "poll",
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default: beside the repository).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
) -> None:
    """Run the real tritonserver on this machine until Ctrl-C or SIGTERM."""
    import signal

    from serving.server import TritonError, TritonServer

    server = TritonServer(
        repository, grpc_port, http_port, metrics_port, model_control, log_file=log_file
    )
    try:
        server.start(timeout)
    except TritonError as e:
        fail(str(e))
    err.print(
        f"tritonserver ready: gRPC 127.0.0.1:{grpc_port}, HTTP {server.url}, log {server.log_file}"
    )

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        assert server.process is not None
        server.process.wait()
        fail(f"tritonserver exited: {server.failure_reason()}")
    except KeyboardInterrupt:
        server.stop()
        err.print("tritonserver stopped")


@app.command()
def serve(
    repository: Annotated[Path, typer.Option(help="Triton model repository.")] = Path(
        "model_repository"
    ),
    host: Annotated[str, typer.Option(help="Gateway address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="Triton gRPC port (127.0.0.1).")] = 8001,
    http_port: Annotated[int, typer.Option(help="Triton HTTP port (127.0.0.1).")] = 8000,
    metrics_port: Annotated[int, typer.Option(help="Triton metrics port.")] = 8002,
) -> None:
    """Start Triton and the gateway (building a demo model first when there is none)."""
    import subprocess

    from cli.serve import default_demo_dir
    from cli.serve import serve as run_serve
    from serving.server import TritonError

    try:
        run_serve(repository, host, port, grpc_port, http_port, metrics_port, default_demo_dir())
    except TritonError as e:
        fail(str(e))
    except subprocess.CalledProcessError as e:
        fail(f"building the demo model failed: {' '.join(map(str, e.cmd[2:]))}")


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM slices.")],
    url: Annotated[str, typer.Option(help="Gateway URL.")] = "http://127.0.0.1:8080",
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


ICONS = {"ok": "[green]ok[/]", "skip": "[dim]done before[/]", "fail": "[bold red]failed[/]"}


class StepDisplay:
    """Redeploy/rollback progress on the terminal: a spinner per step, then its timing."""

    def __init__(self) -> None:
        from rich.status import Status

        self._status: Status | None = None

    def __call__(self, event: StepEvent) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if event.status == "start":
            self._status = err.status(f"{event.step} ...")
            self._status.start()
            return
        timing = f" ({event.seconds:.1f} s)" if event.seconds else ""
        err.print(
            f"{ICONS.get(event.status, event.status)} [bold]{event.step}[/]{timing}: "
            f"{event.detail}",
            soft_wrap=True,
        )


RepositoryOpt = Annotated[Path, typer.Option(help="Triton model repository.")]
GatewayOpt = Annotated[str, typer.Option("--gateway", help="Gateway URL.")]
TritonOpt = Annotated[
    str, typer.Option("--triton", help="Triton gRPC address (explicit model control).")
]
AdminKeyOpt = Annotated[
    str | None, typer.Option(envvar="COVIDCT_ADMIN_KEY", help="The gateway's X-Admin-Key.")
]
ModelOpt = Annotated[str, typer.Option(help="Model name.")]
LogOpt = Annotated[
    Path | None, typer.Option(help="Deployment log (default: REPOSITORY/deployments.jsonl).")
]
SmokeOpt = Annotated[
    Path | None,
    typer.Option(help="Slices for the smoke test (default: the real CT slices)."),
]
WatchOpt = Annotated[float, typer.Option(help="Seconds to watch the error rate after the switch.")]
ErrorRateOpt = Annotated[
    float, typer.Option(help="Error rate after the switch that triggers a rollback.")
]


@app.command()
def redeploy(
    data: Annotated[Path, typer.Option(help="COVIDx-CT folder (its test split is the gate's).")],
    train_config: Annotated[
        Path | None, typer.Option(help="train_config.json to train the candidate with.")
    ] = None,
    from_run: Annotated[
        Path | None, typer.Option(help="A finished run to deploy instead of training.")
    ] = None,
    repository: RepositoryOpt = Path("model_repository"),
    gateway: GatewayOpt = "http://127.0.0.1:8080",
    triton: TritonOpt = "127.0.0.1:8001",
    admin_key: AdminKeyOpt = None,
    model: ModelOpt = "covidct",
    dry_run: Annotated[
        bool, typer.Option(help="Train, evaluate and gate only; change nothing.")
    ] = False,
    max_macro_f1_drop: Annotated[float, typer.Option(help="Gate: allowed macro-F1 drop.")] = 0.01,
    max_covid_sensitivity_drop: Annotated[
        float, typer.Option(help="Gate: allowed COVID-19 sensitivity drop.")
    ] = 0.02,
    max_covid_ppv_drop: Annotated[
        float, typer.Option(help="Gate: allowed COVID-19 PPV drop.")
    ] = 0.02,
    smoke_slices: SmokeOpt = None,
    watch_seconds: WatchOpt = 120.0,
    max_error_rate: ErrorRateOpt = 0.05,
    runs_dir: Annotated[Path, typer.Option(help="Where --train-config runs go.")] = Path("runs"),
    log: LogOpt = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Prepared-cache root.")] = None,
) -> None:
    """Retrain (or take a run), gate it against production, and switch with zero downtime."""
    from rollout.deployment import DeployOptions
    from rollout.gate import GateTolerances
    from rollout.redeploy import describe
    from rollout.redeploy import redeploy as run_redeploy
    from serving.control import DeployError

    try:
        tolerances = GateTolerances(
            macro_f1=max_macro_f1_drop,
            covid_sensitivity=max_covid_sensitivity_drop,
            covid_ppv=max_covid_ppv_drop,
        )
        opts = DeployOptions(
            data=data,
            run=from_run,
            train_config=train_config,
            repository=repository,
            gateway_url=gateway,
            triton_url=triton,
            admin_key=admin_key,
            model=model,
            dry_run=dry_run,
            tolerances=tolerances,
            smoke_slices=smoke_slices,
            watch_seconds=watch_seconds,
            max_error_rate=max_error_rate,
            runs_dir=runs_dir,
            log_path=log,
            cache_root=cache_dir,
        )
        entry = run_redeploy(opts, StepDisplay())
    except (DeployError, ValueError, OSError) as e:
        fail(str(e), code=1)
    for reason in (entry.get("gate") or {}).get("reasons", []):
        err.print(f"  gate: {reason}", soft_wrap=True)
    print(describe(entry))
    if entry["outcome"] == "rejected":
        raise typer.Exit(1)


@app.command()
def rollback(
    to: Annotated[
        int | None, typer.Option(help="Version to serve (default: the one replaced last).")
    ] = None,
    repository: RepositoryOpt = Path("model_repository"),
    gateway: GatewayOpt = "http://127.0.0.1:8080",
    triton: TritonOpt = "127.0.0.1:8001",
    admin_key: AdminKeyOpt = None,
    model: ModelOpt = "covidct",
    smoke_slices: SmokeOpt = None,
    watch_seconds: WatchOpt = 10.0,
    max_error_rate: ErrorRateOpt = 0.05,
    log: LogOpt = None,
) -> None:
    """Switch back to an earlier version with the same zero-downtime protocol."""
    from rollout.deployment import DeployOptions
    from rollout.redeploy import describe
    from rollout.redeploy import rollback as run_rollback
    from serving.control import DeployError

    opts = DeployOptions(
        repository=repository,
        gateway_url=gateway,
        triton_url=triton,
        admin_key=admin_key,
        model=model,
        smoke_slices=smoke_slices,
        watch_seconds=watch_seconds,
        max_error_rate=max_error_rate,
        log_path=log,
    )
    try:
        entry = run_rollback(opts, StepDisplay(), to)
    except (DeployError, ValueError, OSError) as e:
        fail(str(e), code=1)
    print(describe(entry))


@app.command()
def deployments(
    repository: RepositoryOpt = Path("model_repository"),
    log: LogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
) -> None:
    """The deployment log as a table: every redeploy, rejection and rollback."""
    from rich.table import Table

    from rollout.deploylog import LOG_NAME, TABLE_COLUMNS, DeploymentLog, table_rows

    entries = DeploymentLog(log or repository / LOG_NAME).read()
    if as_json:
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return
    table = Table(title=f"deployments ({len(entries)}); figures: candidate / production")
    for column in TABLE_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in table_rows(entries):
        table.add_row(*row)
    Console(width=200).print(table)


# Options several bench commands share.
ResultFolder = Annotated[
    Path | None, typer.Option(help="Result folder (default: bench/results/NAME).")
]
Concurrency = Annotated[str, typer.Option(help="Levels: 1:16:x2, 1:8:2 or 1,2,8.")]
MeasurementMs = Annotated[int, typer.Option(help="perf_analyzer window (ms).")]
Stability = Annotated[
    float, typer.Option(help="perf_analyzer: windows must agree within this percent.")
]


@bench_app.command("data")
def bench_data(
    png: Annotated[int, typer.Option(help="PNG slices to time.")] = 200,
    synth_slices: Annotated[int, typer.Option(help="Synthetic slices to time.")] = 200,
    cache_slices: Annotated[int, typer.Option(help="Slices per cache build.")] = 1000,
    size: Annotated[int, typer.Option(help="Model input size S.")] = 224,
    out: ResultFolder = None,
) -> None:
    """Decode+crop+resize speed per core (PNG, DICOM), synthesis and cache build speed."""
    from bench.data import run_data_bench
    from bench.sweep import save

    section = run_data_bench(png, synth_slices, cache_slices, size)
    save(_bench_out(out, "data"), "data", section, {"size": size})
    print(section)


@bench_app.command("train")
def bench_train(
    backbone: Annotated[str, typer.Option(help="Backbone.")] = "densenet201",
    size: Annotated[int, typer.Option(help="Model input size S.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 6,
    out: ResultFolder = None,
) -> None:
    """Input pipeline images/s versus training-step images/s, plus graph build and memory."""
    from bench.sweep import save
    from bench.train import run_train_bench

    section = run_train_bench(backbone, size, batch_size, steps)
    save(_bench_out(out, "train"), "train", section, {"backbone": backbone, "size": size})
    print(section)


def _bench_out(out: Path | None, name: str) -> Path:
    from bench.sweep import RESULTS

    return out or RESULTS / name


def _levels(text: str) -> list[int]:
    from bench.sweep import BenchError, parse_levels

    try:
        return parse_levels(text)
    except BenchError as e:
        fail(str(e))


@bench_app.command("triton")
def bench_triton(
    repository: Annotated[
        Path | None, typer.Option(help="Model repository: a tritonserver is started on it.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Use this running server instead (HOST:PORT).")
    ] = None,
    model: Annotated[str, typer.Option(help="Model name.")] = "covidct",
    versions: Annotated[
        str, typer.Option(help="Comma-separated versions, measured interleaved (default: latest).")
    ] = "",
    concurrency: Concurrency = "1:16:x2",
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    batch: Annotated[int, typer.Option(help="Batch size per request.")] = 1,
    measurement_ms: MeasurementMs = 4000,
    stability: Stability = 50.0,
    out: ResultFolder = None,
) -> None:
    """perf_analyzer sweep with real CT slices: CSV, throughput-latency PNG, report section."""
    from bench.perf import run_triton_bench
    from bench.sweep import BenchError

    levels = _levels(concurrency)
    chosen = [v.strip() for v in versions.split(",") if v.strip()]
    try:
        print(
            run_triton_bench(
                repository,
                url,
                model,
                chosen,
                levels,
                _bench_out(out, "triton"),
                protocol,
                batch,
                measurement_ms,
                stability,
            )
        )
    except BenchError as e:
        fail(str(e))


@bench_app.command("gateway")
def bench_gateway(
    url: Annotated[str, typer.Option(help="Gateway URL.")] = "http://127.0.0.1:8080",
    triton: Annotated[
        str | None, typer.Option(help="Also measure Triton directly (gRPC HOST:PORT).")
    ] = None,
    concurrency: Concurrency = "1:16:x2",
    requests: Annotated[int, typer.Option(help="Most requests per level.")] = 200,
    seconds: Annotated[float, typer.Option(help="Most seconds per level.")] = 30.0,
    measurement_ms: MeasurementMs = 4000,
    stability: Stability = 50.0,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COVIDCT_API_KEY", help="X-API-Key, if the gateway has one."),
    ] = None,
    label: Annotated[str, typer.Option(help="Added to the report heading.")] = "",
    out: ResultFolder = None,
) -> None:
    """Load test of /v1/predict with real PNG and DICOM slices, beside Triton direct."""
    from bench.load import run_gateway_bench
    from bench.sweep import BenchError

    levels = _levels(concurrency)
    try:
        print(
            run_gateway_bench(
                url,
                levels,
                _bench_out(out, "gateway"),
                triton,
                requests,
                seconds,
                measurement_ms,
                api_key,
                stability,
                label,
            )
        )
    except BenchError as e:
        fail(str(e))


@bench_app.command("engines")
def bench_engines(
    run: Annotated[Path, typer.Option(help="Finished training run (its SavedModel).")],
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8,16",
    rounds: Annotated[int, typer.Option(help="Timed calls per batch size.")] = 10,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="COVIDx-CT folder whose val slices calibrate INT8 (default: half "
            "the real slices, agreement judged on the other half)."
        ),
    ] = None,
    out: ResultFolder = None,
) -> None:
    """TF SavedModel, ONNX Runtime fp32, OpenVINO fp32, ONNX Runtime INT8: one run."""
    from bench.engines import run_engines_bench
    from bench.sweep import BenchError
    from export.onnx import ExportError
    from training.train import TrainError

    sizes = _levels(batches)
    try:
        print(run_engines_bench(run, _bench_out(out, "engines"), sizes, rounds, calibration_data))
    except (BenchError, ExportError, TrainError) as e:
        fail(str(e))


@bench_app.command("settings")
def bench_settings(
    repository: Annotated[Path, typer.Option(help="Repository with an exported cpu version.")],
    model: Annotated[str, typer.Option(help="Model name.")] = "covidct",
    version: Annotated[int | None, typer.Option(help="Version (default: latest).")] = None,
    concurrency: Concurrency = "1:16:x2",
    measurement_ms: MeasurementMs = 4000,
    stability: Stability = 50.0,
    out: ResultFolder = None,
) -> None:
    """Dynamic batching off/on (two delays), one/two instances: which should export use?"""
    from bench.settings import run_settings_bench
    from bench.sweep import BenchError

    levels = _levels(concurrency)
    try:
        print(
            run_settings_bench(
                repository,
                _bench_out(out, "settings"),
                levels,
                model,
                version,
                measurement_ms,
                stability,
            )
        )
    except BenchError as e:
        fail(str(e))


@bench_app.command("capacity")
def bench_capacity(
    workers: Annotated[str, typer.Option(help="Gateway worker counts, e.g. 1,2.")] = "1,2",
    concurrency: Annotated[int, typer.Option(help="Concurrent connections.")] = 16,
    seconds: Annotated[float, typer.Option(help="Seconds per worker count.")] = 15.0,
    profile: Annotated[
        bool, typer.Option(help="py-spy the 1-worker gateway: where its time goes.")
    ] = True,
    out: ResultFolder = None,
) -> None:
    """The gateway's ceiling: PNG uploads/s per worker with a model that costs nothing."""
    from bench.capacity import run_capacity_bench
    from bench.sweep import BenchError

    counts = _levels(workers)
    try:
        print(
            run_capacity_bench(
                _bench_out(out, "capacity"), counts, concurrency, seconds, 20000, profile
            )
        )
    except BenchError as e:
        fail(str(e))


@bench_app.command("all")
def bench_all(
    work: Annotated[Path, typer.Option(help="Data, run and repository for the benchmarks.")] = Path(
        "runs/bench"
    ),
    run: Annotated[
        Path | None, typer.Option(help="Use this run (default: train DenseNet201 224² once).")
    ] = None,
    only: Annotated[
        str, typer.Option(help="Comma-separated subset of the benchmarks.")
    ] = "data,train,engines,triton,settings,gateway,capacity",
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("BENCHMARKS.md"),
) -> None:
    """Every benchmark (preparing the model they need), then BENCHMARKS.md: `make bench`."""
    from bench.all import run_all
    from bench.sweep import RESULTS, BenchError

    try:
        run_all(work, run, RESULTS, tuple(s.strip() for s in only.split(",") if s.strip()), output)
    except BenchError as e:
        fail(str(e))


@bench_app.command("report")
def bench_report(
    results: Annotated[Path | None, typer.Option(help="Result folders.")] = None,
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("BENCHMARKS.md"),
) -> None:
    """Write BENCHMARKS.md from the result folders (targets table computed from them)."""
    from bench.report import write_report
    from bench.sweep import RESULTS

    root = results or RESULTS
    if not root.is_dir():
        fail(f"{root} does not exist: run a `covidct bench ...` command first")
    write_report(root, output)
    err.print(f"wrote {output}")


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
