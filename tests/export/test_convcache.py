"""The conversion cache (export/convcache.py): keyed by content, whole or absent, pruned."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from covidct.config import ModelSpec
from export import convcache


def _saved_model(root: Path) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    return root


@pytest.fixture
def slices(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    return files


def test_the_key_changes_with_every_input_it_depends_on(tmp_path: Path, slices) -> None:
    sm = _saved_model(tmp_path / "sm")
    spec = ModelSpec(image_size=64, backbone="densenet121")
    key = convcache.conversion_key(sm, spec, 17, slices)
    assert key == convcache.conversion_key(sm, spec, 17, slices)
    assert key != convcache.conversion_key(sm, spec, 18, slices)
    assert key != convcache.conversion_key(sm, ModelSpec(image_size=32), 17, slices)
    assert key != convcache.conversion_key(sm, spec, 17, slices[:1])
    (sm / "variables" / "variables.data-00000-of-00001").write_bytes(b"retrained")
    assert key != convcache.conversion_key(sm, spec, 17, slices)


def test_an_entry_comes_back_whole_or_not_at_all(tmp_path: Path) -> None:
    root = tmp_path / "onnx"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx graph")
    reference = {"probabilities": np.eye(3, dtype=np.float32), "cam": np.ones((3, 2, 2, 3))}
    assert convcache.lookup("k1", root) is None
    convcache.store("k1", model, reference, root)
    entry = convcache.lookup("k1", root)
    assert entry is not None and entry.onnx.read_bytes() == b"onnx graph"
    got = entry.reference()
    assert set(got) == set(reference)
    assert all(np.array_equal(got[k], reference[k]) for k in reference)
    (entry.folder / "reference.npz").unlink()  # half an entry is no entry
    assert convcache.lookup("k1", root) is None
    assert not list(root.glob(".tmp-*"))


def test_storing_twice_keeps_the_first_and_a_cache_that_cannot_be_written_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"first")
    root = tmp_path / "onnx"
    convcache.store("k", model, {"p": np.zeros(2)}, root)
    model.write_bytes(b"second")
    convcache.store("k", model, {"p": np.zeros(2)}, root)  # another export got there first
    entry = convcache.lookup("k", root)
    assert entry is not None and entry.onnx.read_bytes() == b"first"
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    convcache.store("k", model, {"p": np.zeros(2)}, blocked / "onnx")
    assert "not written" in caplog.text


def test_prune_keeps_the_most_recently_used_and_sweeps_old_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "onnx"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    root.mkdir()
    for i in range(convcache.KEEP + 2):  # stored by exports long ago, oldest first
        convcache.store(f"k{i}", model, {"p": np.zeros(1)}, tmp_path / "made")
        (tmp_path / "made" / f"k{i}").rename(root / f"k{i}")
        os.utime(root / f"k{i}", (1000 + i, 1000 + i))
    assert convcache.lookup("k0", root) is not None  # used now: the newest
    left = root / ".tmp-killed"
    left.mkdir()
    os.utime(left, (1000, 1000))
    convcache.prune(root)
    kept = sorted(p.name for p in root.iterdir())
    assert len(kept) == convcache.KEEP and "k0" in kept
    assert "k1" not in kept and "k2" not in kept and ".tmp-killed" not in kept


def test_a_damaged_or_vanished_entry_means_converting_again(tmp_path: Path) -> None:
    root, model, dest = tmp_path / "onnx", tmp_path / "model.onnx", tmp_path / "stage.onnx"
    model.write_bytes(b"graph")
    convcache.store("k", model, {"p": np.arange(3.0)}, root)
    got = convcache.fetch("k", dest, root)
    assert got is not None and np.array_equal(got["p"], np.arange(3.0))
    assert dest.read_bytes() == b"graph"
    (root / "k" / "reference.npz").write_bytes(b"PK\x03\x04 cut short")
    assert convcache.fetch("k", dest, root) is None
    assert convcache.fetch("absent", dest, root) is None
