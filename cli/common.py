"""What every area of the command line shares: the error console, ``fail``, logging and the
options several areas spell the same way."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, emoji=False)

RepositoryOpt = Annotated[Path, typer.Option(help="Triton model repository.")]
#: Where every command finds the Triton model repository unless told otherwise.
DEFAULT_REPOSITORY = Path("model_repository")
ModelOpt = Annotated[str, typer.Option(help="Model name.")]


def print_error(message: str) -> None:
    """Print ``message`` literally (no markup, no emoji codes) as an error."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as an error and exit: for what the command itself finds wrong."""
    print_error(message)
    raise typer.Exit(code)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
