"""The prepared cache: equal to the one preprocessing, resumable, never half-written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from covidct.dataset import DatasetError, read_covidx
from covidct.preprocessing import preprocess_bytes
from training.cache import CacheError, PreparedCache, prepare_cache


def test_cache_holds_exactly_the_preprocessed_slices(synth_dir: Path, tmp_path: Path) -> None:
    manifest = prepare_cache(synth_dir, tmp_path / "c", size=64, workers=2, shard_size=5)
    cache = PreparedCache(tmp_path / "c")
    ds = read_covidx(synth_dir)
    assert cache.size == 64 and set(cache.splits) == {"train", "val", "test"}
    assert manifest["data_fingerprint"] == ds.fingerprint()
    for split, samples in ds.splits.items():
        images, index = cache.images(split), cache.index(split)
        assert images.shape == (len(samples), 64, 64, 1) and images.dtype == np.uint8
        assert list(index["filenames"]) == [s.filename for s in samples]
        assert list(index["labels"]) == [s.label for s in samples]
        assert index["boxes"].tolist() == [list(s.box) for s in samples]
        assert list(index["patients"]) == [s.patient for s in samples]
        for i, s in enumerate(samples):
            expected = preprocess_bytes(ds.image_path(s).read_bytes(), 64, box=s.box).image
            assert np.array_equal(images[i], expected)
    assert cache.verify() == []


def test_resume_keeps_finished_shards_and_drops_half_written_ones(
    synth_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    prepare_cache(synth_dir, out, size=32, shard_size=4)
    reference = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    # Simulate an interruption: no manifest, one shard uncommitted, one half-written temp.
    (out / "manifest.json").unlink()
    (out / "train-00001.json").unlink()
    (out / ".tmp-train-00002.npy").write_bytes(b"half")
    kept = (out / "train-00000.npy").stat().st_mtime_ns
    manifest = prepare_cache(synth_dir, out, size=32, shard_size=4)
    assert manifest["build"]["slices_built"] == 4
    assert (out / "train-00000.npy").stat().st_mtime_ns == kept
    assert not list(out.glob(".tmp-*"))
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == reference
    # A complete cache is reused as is.
    again = prepare_cache(synth_dir, out, size=32, shard_size=4)
    assert again == json.loads((out / "manifest.json").read_text())


def test_corrupted_shard_is_detected(synth_dir: Path, tmp_path: Path) -> None:
    prepare_cache(synth_dir, tmp_path / "c", size=32, shard_size=8)
    shard = tmp_path / "c" / "val-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert PreparedCache(tmp_path / "c").verify() == ["val-00000"]


def test_other_parameters_are_refused(synth_dir: Path, tmp_path: Path) -> None:
    prepare_cache(synth_dir, tmp_path / "c", size=32)
    with pytest.raises(CacheError, match="different size"):
        prepare_cache(synth_dir, tmp_path / "c", size=48)


def test_broken_dataset_is_refused_before_anything_is_written(
    fixtures: Path, tmp_path: Path
) -> None:
    root = tmp_path / "d"
    shutil.copytree(fixtures / "covidxct-real", root)
    (root / "images" / "COVIDCTMD-P001-IM0038.png").unlink()
    with pytest.raises(DatasetError, match="image not found"):
        prepare_cache(root, tmp_path / "c", size=32)
    assert not (tmp_path / "c").exists()


def test_slices_that_fail_preprocessing_are_listed(fixtures: Path, tmp_path: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(fixtures / "covidxct-real", root)
    # A readable header with garbage pixel data: passes the header check, fails decoding.
    path = root / "images" / "COVIDCTMD-P001-IM0038.png"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CacheError, match=re.escape("COVIDCTMD-P001-IM0038.png")):
        prepare_cache(root, tmp_path / "c", size=32)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_reading_an_unfinished_cache_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="not a finished cache"):
        PreparedCache(tmp_path)
