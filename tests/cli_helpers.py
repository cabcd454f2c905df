"""Run the covidct command line in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The CI-sized data set: synthetic patients x slices and the data seed (``covidct data synth``).
CI_DATA = ["--patients", "150", "--slices-per-patient", "3", "--seed", "9"]
#: The CI-sized training recipe; scripts/ci_recipe_sweep.py measures it over seeds and numerics.
CI_TRAIN = [
    "--backbone",
    "densenet121",
    "--image-size",
    "64",
    "--epochs",
    "14",
    "--weights",
    "none",
    "--batch-size",
    "8",
    "--patience",
    "14",
    "--zoom",
    "0",
    "--brightness",
    "0",
    "--contrast",
    "0",
    "--balance",  # pinned: the thresholds were measured with class weights
    "class-weights",
    "--seed",
    "0",
]
#: The real-data gate's recipe (tests/training/test_real_gate.py): DenseNet121 from scratch at
#: 64x64 on half the train patients of covidxct-128 (tests/realdata.py), whole val and test;
#: scripts/ci_recipe_sweep.py --real measures it over seeds and numerics.
REAL_TRAIN = [
    "--backbone",
    "densenet121",
    "--image-size",
    "64",
    "--epochs",
    "6",
    "--weights",
    "none",
    "--batch-size",
    "16",
    "--patience",
    "6",
    "--brightness",
    "0",
    "--contrast",
    "0",
    "--balance",  # pinned: the thresholds were measured with class weights
    "class-weights",
    "--seed",
    "0",
]
#: The smallest training that runs the whole pipeline (plumbing tests: resume, seeds, the compose
#: stack). VGG16, not the default DenseNet121: Keras traces VGG16's 19 layers' train step in
#: about 5 s, DenseNet121's 427 in 60-70 s on these CPUs, and its SavedModel export likewise.
TINY_TRAIN = [
    "--backbone",
    "vgg16",
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
        [sys.executable, "-m", "cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
