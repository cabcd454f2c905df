"""Atomic versions in the Triton model repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidct.config import ModelSpec
from covidct.modelconfig import config_json, parse_config
from export.repository import pinned_config, publish_version, staged_version, versions
from export.tritonconfig import RepositoryError, TritonOptions, render_config
from tests.export.test_tritonconfig import CAM, SPEC


def _publish(repo: Path, spec: ModelSpec = SPEC, fail: bool = False) -> int:
    with staged_version(repo, spec.name) as stage:
        (stage / "model.onnx").write_bytes(b"onnx bytes")

        def boom() -> None:
            raise RuntimeError("interrupted")

        return publish_version(
            repo,
            spec,
            TritonOptions(),
            stage,
            CAM,
            {"source_run": "x"},
            before_rename=boom if fail else None,
        )


def snapshot(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()
    }


def test_versions_increase_and_carry_a_manifest(tmp_path: Path) -> None:
    assert _publish(tmp_path) == 1
    assert _publish(tmp_path) == 2
    assert versions(tmp_path / "covidct") == [1, 2]
    manifest = json.loads((tmp_path / "covidct" / "2" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["source_run"] == "x"
    assert set(manifest["files"]) == {"model.onnx"}
    assert (tmp_path / "covidct" / "labels.txt").read_text().split() == [
        "Normal",
        "Pneumonia",
        "COVID-19",
    ]
    assert not list((tmp_path / "covidct").glob(".tmp-*"))


def test_failed_publish_leaves_the_repository_exactly_as_it_was(tmp_path: Path) -> None:
    _publish(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        _publish(tmp_path, fail=True)
    assert snapshot(tmp_path) == before
    assert not list((tmp_path / "covidct").glob(".tmp-*"))


def test_a_different_input_size_is_refused(tmp_path: Path) -> None:
    _publish(tmp_path)
    with pytest.raises(RepositoryError, match="another --name"):
        _publish(tmp_path, ModelSpec(image_size=128))


def test_pinned_config_serves_exactly_the_named_versions(tmp_path: Path) -> None:
    spec = ModelSpec(image_size=64)
    text = render_config(spec, TritonOptions(pinned_versions=(3, 2)), (2, 2))
    parsed = parse_config(text)
    assert list(parsed.version_policy.specific.versions) == [2, 3]
    assert not parsed.version_policy.HasField("latest")
    override = json.loads(config_json(parsed))
    assert override["version_policy"] == {"specific": {"versions": ["2", "3"]}}
    model = tmp_path / "covidct"
    (model / "2").mkdir(parents=True)
    manifest = {"model_spec": spec.to_dict(), "serving": {"max_batch_size": 4}, "cam_hw": [2, 2]}
    (model / "2" / "manifest.json").write_text(json.dumps(manifest))
    pinned = parse_config(pinned_config(model, 2, [2]))
    assert list(pinned.version_policy.specific.versions) == [2] and pinned.max_batch_size == 4
