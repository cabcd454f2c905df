"""The root app: every area mounted, top-level commands at the top level, no heavy imports."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.core import TyperGroup

from cli.main import app


def test_commands_are_mounted_in_order() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    assert list(root.commands) == [
        "preprocess",
        "train",
        "evaluate",
        "export",
        "triton",
        "serve",
        "predict",
        "redeploy",
        "rollback",
        "deployments",
        "data",
        "bench",
        "pacs",
    ]
    data, bench = root.commands["data"], root.commands["bench"]
    assert isinstance(data, TyperGroup) and isinstance(bench, TyperGroup)
    assert list(data.commands) == ["check", "synth", "prepare"]
    assert list(bench.commands) == [
        "data",
        "train",
        "triton",
        "gateway",
        "engines",
        "settings",
        "capacity",
        "replicas",
        "overload",
        "quality",
        "pacs",
        "all",
        "report",
    ]


def test_importing_the_cli_stays_light() -> None:
    """`covidct --help` and `covidct preprocess` load no engine, server or training code.

    Of rollout, only the options the commands take their defaults from (standard library
    dataclasses and the deployment log's names)."""
    heavy = ("tensorflow", "keras", "training", "bench", "gateway", "serving", "rollout", "httpx")
    light = ("rollout", "rollout.options", "rollout.deploylog")
    code = (
        "import sys, cli.main; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} "
        f"and m not in {light!r}); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
