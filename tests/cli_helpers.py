"""Run the covidct command line in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CI_TRAIN = [
    "--backbone",
    "densenet121",
    "--image-size",
    "64",
    "--epochs",
    "12",
    "--weights",
    "none",
    "--batch-size",
    "16",
    "--patience",
    "12",
    "--seed",
    "0",
]
TINY_TRAIN = [
    "--backbone",
    "densenet121",
    "--image-size",
    "32",
    "--weights",
    "none",
    "--batch-size",
    "16",
]


def covidct(
    *args: str | Path, env: dict[str, str] | None = None, timeout: int = 1200
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covidct", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
