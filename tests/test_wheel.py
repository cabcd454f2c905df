"""The installed wheel works from any directory: core commands, package data, no checkout."""

from __future__ import annotations

import json
import zipfile

from covidct.samples import reference_samples
from tests.wheel import InstalledWheel


def test_wheel_carries_the_reference_slices_and_runtime_files(
    installed_wheel: InstalledWheel,
) -> None:
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    for sample in reference_samples():
        assert f"covidct/reference_slices/{sample.path.name}" in names
    assert "covidct/reference_slices/labels.txt" in names
    assert "export/python_backend/model.py" in names and "gateway/static/index.html" in names
    assert not any(n.startswith(("tests/", "bench/results/")) for n in names)


def test_installed_packages_come_from_the_wheel_not_the_checkout(
    installed_wheel: InstalledWheel,
) -> None:
    code = "import covidct, cli, export, gateway, rollout, serving, training; " + (
        "print(*(m.__file__ for m in (covidct, cli, export, gateway, rollout, serving, training)))"
    )
    result = installed_wheel.python(code)
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert len(files) == 7
    assert all(f.startswith(str(installed_wheel.venv)) for f in files), files


def test_preprocess_and_export_help_run_from_outside_the_checkout(
    installed_wheel: InstalledWheel,
) -> None:
    sample = reference_samples()[0]
    slice_png = installed_wheel.workdir / "slice.png"
    slice_png.write_bytes(sample.path.read_bytes())
    result = installed_wheel.run("preprocess", slice_png, "--size", "64", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["size"] == 64 and info["source"] == "png" and info["box_policy"] == "auto-body"

    result = installed_wheel.run("export", "--help")
    assert result.returncode == 0, result.stderr
    assert "--calibration-data" in result.stdout and "--agreement-data" in result.stdout
