"""``covidct preprocess`` and the ``covidct data`` group: check, synthesize, prepare the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, fail
from covidct.config import DEFAULT_IMAGE_SIZE, ModelSpec
from covidct.preprocessing import Box, PreprocessingError, preprocess_bytes

app = typer.Typer()
data_app = typer.Typer(
    help="COVIDx-CT folders: check, synthesize, prepare the cache.", no_args_is_help=True
)


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
    size: Annotated[
        int | None, typer.Option(help=f"Output size S (default: {DEFAULT_IMAGE_SIZE}).")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="Take S from this model_spec.json.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the S x S model input here (PNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Show what the model will see for FILE: decode, window, crop, resize."""
    if size is not None and spec is not None:
        fail("give --size or --spec, not both")
    model_spec = ModelSpec.load(spec) if spec else ModelSpec(image_size=size or DEFAULT_IMAGE_SIZE)
    try:
        data = file.read_bytes()
    except OSError as e:
        fail(f"{file}: cannot read: {e.strerror}")
    try:
        result = preprocess_bytes(data, model_spec.image_size, box=parse_box(box) if box else None)
    except PreprocessingError as e:  # the library does not know the file's name
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        fail(f"{file}: {e}{cause}")
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
    out: Annotated[Path | None, typer.Option(help="Cache folder.")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Instead of --out: the cache root `covidct train --cache-dir` reads (the "
            "folder is named after the data's fingerprint and S), e.g. a volume that training "
            "workers mount read-only."
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Model input size S.")] = DEFAULT_IMAGE_SIZE,
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = os.cpu_count() or 1,
) -> None:
    """Preprocess every slice once into memory-mapped uint8 shards (resumable)."""
    from rich.progress import Progress

    from covidct.dataset import SPLITS
    from training.cache import prepare_cache, read_checked
    from training.run import cache_folder

    if (out is None) == (cache_dir is None):
        fail("give one of --out (a cache folder) or --cache-dir (training's cache root)")
    if out is None:
        out = cache_folder(read_checked(data, check_images=False), size, cache_dir)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("preprocessing slices", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        manifest = prepare_cache(data, out, size, workers=workers, progress=report)
    counts = {k: manifest["splits"][k]["count"] for k in SPLITS if k in manifest["splits"]}
    print(f"cache {out} ready (S={size}): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
