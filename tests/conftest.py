"""Shared fixtures: real CT data (../shared/data when present, else the copied fixtures) and
one synthetic COVIDx-CT folder per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct.bench import REPO

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The 123 real slices and 11 DICOMs; the tests that need all of them skip without it."""
    if not (SHARED_DATA / "covidxct-real").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients x 3 slices of synthetic CT at 512², shared by every test that reads it."""
    from training.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, patients=12, slices_per_patient=3, seed=7, workers=1)
    return out
