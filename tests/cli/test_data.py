"""``covidct preprocess`` and ``covidct data``: real processes, real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli_helpers import covidct


def test_preprocess_json_and_out(fixtures: Path, tmp_path: Path) -> None:
    # PNG bytes under a .dcm name: the format comes from the bytes.
    src = tmp_path / "slice.dcm"
    shutil.copy(fixtures / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png", src)
    out = tmp_path / "input.png"
    run = covidct("preprocess", src, "--size", "128", "--out", out, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["source"] == "png" and summary["size"] == 128
    assert summary["window"] == [-600.0, 1500.0]
    assert len(summary["box"]) == 4 and summary["box_policy"] == "auto-body"
    assert np.asarray(Image.open(out)).shape == (128, 128)


def test_preprocess_dicom_with_box_and_spec(fixtures: Path, tmp_path: Path) -> None:
    spec = tmp_path / "model_spec.json"
    spec.write_text(json.dumps({"image_size": 96}))
    run = covidct(
        "preprocess",
        fixtures / "dicom" / "normal002__IM0042.dcm",
        "--box",
        "0,147,512,405",
        "--spec",
        spec,
        "--json",
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["source"] == "dicom" and summary["size"] == 96
    assert summary["box"] == [0, 147, 512, 405]


def test_preprocess_errors_name_the_file(fixtures: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    for args, text in [
        ((junk,), "junk.png: unsupported format"),
        ((fixtures / "dicom" / "0002.dcm",), "0002.dcm: not a usable CT slice: Modality is XA"),
        ((tmp_path / "missing.png",), "missing.png: cannot read"),
        ((junk, "--box", "1,2,3"), "--box '1,2,3': expected four integers"),
    ]:
        run = covidct("preprocess", *args)
        assert run.returncode == 2, run
        assert text in " ".join(run.stderr.split()), run.stderr
        assert "Traceback" not in run.stderr


def test_data_check_real_and_broken(real_data: Path, tmp_path: Path) -> None:
    run = covidct("data", "check", real_data / "covidxct-real")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith("test: Normal=")
    broken = tmp_path / "broken"
    shutil.copytree(real_data / "covidxct-real", broken)
    (broken / "images").chmod(0o755)
    for p in (broken / "images").iterdir():
        p.chmod(0o644)
    (broken / "test_COVIDx-CT.txt").chmod(0o644)
    lines = (broken / "test_COVIDx-CT.txt").read_text().splitlines()
    (broken / "images" / lines[0].split()[0]).unlink()
    lines[1] = lines[1].split()[0] + " 5 0 100 512 400"
    lines[2] = lines[2].split()[0] + " 0 0 100 700 400"
    (broken / "test_COVIDx-CT.txt").write_text("\n".join(lines) + "\n")
    run = covidct("data", "check", broken)
    assert run.returncode == 1
    out = run.stdout
    assert "3 problem(s)" in out
    assert f"test_COVIDx-CT.txt:1: {lines[0].split()[0]}: image not found" in out
    assert "test_COVIDx-CT.txt:2:" in out and "bad class 5" in out
    assert "test_COVIDx-CT.txt:3:" in out and "outside the 512x512 image" in out


def test_synth_then_prepare(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    run = covidct(
        "data",
        "synth",
        "--out",
        data,
        "--patients",
        "9",
        "--slices-per-patient",
        "2",
        "--seed",
        "1",
        "--size",
        "256",
        "--workers",
        "1",
    )
    assert run.returncode == 0, run.stderr
    assert "wrote 18 synthetic slices" in run.stdout
    run = covidct("data", "check", data)
    assert run.returncode == 0 and run.stdout.count("Normal=") == 3, run.stdout
    run = covidct(
        "data", "prepare", "--data", data, "--out", cache, "--size", "64", "--workers", "1"
    )
    assert run.returncode == 0, run.stderr
    assert "train=6, val=6, test=6" in run.stdout and (cache / "manifest.json").is_file()
    run = covidct("data", "prepare", "--data", data, "--out", cache, "--size", "32")
    assert run.returncode == 2 and "different size" in run.stderr
