"""The ``covidct`` command line. Thin: every command calls the library and reports errors
as one clear message naming the file, never a traceback.

Every error the library raises on purpose derives from ``CovidctError``; ``main`` turns it
into that message and the error's exit code (2, or 1 for a refused redeploy) in one place,
so commands do not catch error types of their own.

Each area has its own Typer app (cli/data.py, cli/train.py, ...); this module mounts them.
"""

from __future__ import annotations

import sys

import typer

from cli import bench, data, export, pacs, rollout, stack, train
from cli.common import err, print_error, setup_logging
from covidct.errors import CovidctError

app = typer.Typer(
    help="COVID-19 chest CT slice classification: data, training, export, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Mounted without a name, an area's commands are top-level ones: `covidct train`.
for area in (data, train, export, stack, rollout):
    app.add_typer(area.app)
app.add_typer(data.data_app, name="data")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(pacs.pacs_app, name="pacs")


def main() -> None:
    setup_logging()
    try:
        app()
    except CovidctError as e:
        report_error(e)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


def report_error(e: CovidctError) -> None:
    """One message for a library error, and its exit code."""
    print_error(str(e))
    sys.exit(e.exit_code)
