"""The ``covidct`` command line. Thin: every command calls the library and reports errors
as one clear message naming the file (exit 2), never a traceback.

Each area has its own Typer app (cli/data.py, cli/train.py, ...); this module mounts them.
"""

from __future__ import annotations

import sys

import typer

from cli import bench, data, export, rollout, serving, train
from cli.common import err, setup_logging

app = typer.Typer(
    help="COVID-19 chest CT slice classification: data, training, export, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Mounted without a name, an area's commands are top-level ones: `covidct train`.
for area in (data, train, export, serving, rollout):
    app.add_typer(area.app)
app.add_typer(data.data_app, name="data")
app.add_typer(bench.bench_app, name="bench")


def main() -> None:
    setup_logging()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
