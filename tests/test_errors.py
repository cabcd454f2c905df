"""One error root: every exception class the project defines derives from CovidctError, and
the command line turns one into a message and its exit code (cli/main.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

from covidct.errors import CovidctError

PACKAGES = (
    "covidct",
    "training",
    "export",
    "serving",
    "rollout",
    "gateway",
    "dicomnode",
    "bench",
    "cli",
)


def _modules() -> list[ModuleType]:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue  # running it would start a server
            found.append(importlib.import_module(info.name))
    return found


def test_every_exception_the_project_defines_derives_from_the_one_root() -> None:
    defined = {
        cls
        for module in _modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and issubclass(cls, BaseException)
    }
    assert len(defined) >= 15  # the package roots and their subclasses
    outside = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, CovidctError)
    )
    assert not outside, f"exceptions outside covidct.errors.CovidctError: {outside}"


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("from covidct.config import SpecError as E", 2),
        ("from rollout.control import DeployError as E", 1),
    ],
)
def test_the_cli_reports_a_library_error_as_one_line_and_its_exit_code(
    code: str, exit_code: int
) -> None:
    """Raised from inside a command: no traceback, one message, the error's own exit code."""
    script = (
        "import sys, typer\n"
        f"{code}\n"
        "import cli.main\n"
        "@cli.main.app.command('fail-for-test')\n"
        "def fail_for_test() -> None:\n"
        "    raise E('model_spec.json: image_size 7 is below 32')\n"
        "sys.argv = ['covidct', 'fail-for-test']\n"
        "cli.main.main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: model_spec.json: image_size 7 is below 32" in result.stderr
