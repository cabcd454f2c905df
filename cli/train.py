"""``covidct train`` and ``covidct evaluate``: a COVIDx-CT folder in, a run directory out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail
from covidct.config import TrainConfig

#: Every option of ``covidct train`` that is a TrainConfig field takes its default from here.
TRAIN_DEFAULTS = TrainConfig()

app = typer.Typer()


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="COVIDx-CT folder (the cache is prepared or reused).")],
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    backbone: Annotated[
        str,
        typer.Option(
            help="densenet201, densenet121, densenet169, vgg16, vgg19, resnet101 or resnet152."
        ),
    ] = TRAIN_DEFAULTS.backbone,
    image_size: Annotated[
        int, typer.Option(help="Model input size S.")
    ] = TRAIN_DEFAULTS.image_size,
    epochs: Annotated[
        int, typer.Option(help="Fine-tuning epochs (from scratch: all epochs).")
    ] = TRAIN_DEFAULTS.epochs,
    head_epochs: Annotated[
        int, typer.Option(help="Head-only epochs before fine-tuning (pretrained weights only).")
    ] = TRAIN_DEFAULTS.head_epochs,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = TRAIN_DEFAULTS.batch_size,
    weights: Annotated[
        str,
        typer.Option(help="imagenet, none (from scratch) or a .weights.h5 file for the backbone."),
    ] = TRAIN_DEFAULTS.weights,
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
    ] = TRAIN_DEFAULTS.unfreeze,
    learning_rate: Annotated[
        float, typer.Option(help="Head / from-scratch learning rate.")
    ] = TRAIN_DEFAULTS.learning_rate,
    fine_tune_learning_rate: Annotated[
        float, typer.Option(help="Fine-tuning rate.")
    ] = TRAIN_DEFAULTS.fine_tune_learning_rate,
    dropout: Annotated[
        float, typer.Option(help="Dropout on pooled features.")
    ] = TRAIN_DEFAULTS.dropout,
    augment: Annotated[bool, typer.Option(help="Augment the training split.")] = (
        TRAIN_DEFAULTS.augment
    ),
    flip: Annotated[bool, typer.Option(help="Random horizontal flips (with --augment).")] = (
        TRAIN_DEFAULTS.flip
    ),
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
    ] = TRAIN_DEFAULTS.balance,
    mixed_precision: Annotated[bool, typer.Option(help="float16 compute (GPUs).")] = (
        TRAIN_DEFAULTS.mixed_precision
    ),
    strategy: Annotated[
        str,
        typer.Option(
            help="default, mirrored (all local GPUs) or multiworker (TF_CONFIG, or an Indexed "
            "Job's index: training/cluster.py; --batch-size is then per worker)."
        ),
    ] = TRAIN_DEFAULTS.strategy,
    launch_local: Annotated[
        int,
        typer.Option(
            help="Start N multiworker processes on this machine (TF_CONFIG set for each; a "
            "failed worker restarts all of them from the last backup)."
        ),
    ] = 0,
    max_restarts: Annotated[
        int, typer.Option(help="With --launch-local: restarts of the worker group.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed (deterministic on CPU).")] = TRAIN_DEFAULTS.seed,
    patience: Annotated[
        int, typer.Option(help="Early stopping patience (epochs).")
    ] = TRAIN_DEFAULTS.patience,
    calibrate: Annotated[bool, typer.Option(help="Fit a temperature on val.")] = (
        TRAIN_DEFAULTS.calibrate
    ),
    auto_split: Annotated[
        str,
        typer.Option(
            help=(
                "For folders without train/val label files: none, patient (patient-disjoint "
                "70/15/15) or slice (smoke tests only: leaks patients)."
            )
        ),
    ] = TRAIN_DEFAULTS.auto_split,
    name: Annotated[
        str, typer.Option(help="Model name (Triton model name).")
    ] = TRAIN_DEFAULTS.model_name,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache root (default $COVIDCT_CACHE_DIR or ~/.cache/covidct)."),
    ] = None,
) -> None:
    """Fine-tune a Keras backbone on a COVIDx-CT folder into a servable run directory."""
    # Options are checked here, once, not once per launched worker.
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
    if launch_local:
        from training.cluster import launch_local as launch

        if not data.is_dir():
            fail(f"--data {data}: no such folder")
        raise typer.Exit(launch(_worker_args(sys.argv), launch_local, out, max_restarts))
    from training.train import train as run_training

    # Progress bars on a terminal; one line per epoch in logs and CI.
    verbose = "auto" if sys.stdout.isatty() else 2
    results = run_training(data, out, cfg, resume=resume, cache_root=cache_dir, verbose=verbose)
    if "worker" in results:  # a non-chief worker of a multi-worker run
        print(f"worker {results['worker']} of {results['workers']} done; the chief writes {out}")
        return
    print("\n\n".join(results["tables"]))
    print(f"run written to {out} (SavedModel, model card, metrics)")


def _worker_args(argv: list[str]) -> list[str]:
    """This command's arguments for each worker: without the launcher's own options."""
    args = argv[argv.index("train") + 1 :]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--launch-local", "--max-restarts", "--strategy"):
            skip = "=" not in a
            continue
        out.append(a)
    return out


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
    from covidct.dataset import SPLITS
    from training.report import evaluate_run

    if split not in SPLITS:
        fail(f"--split {split!r}: choose {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    try:
        print(evaluate_run(run, data, split, out, cache_dir))
    except (ValueError, OSError) as e:  # an empty split, an unreadable run file: named
        fail(str(e))
