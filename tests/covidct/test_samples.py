"""The reference slices packaged with covidct: real, labelled, usable by the model input path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from covidct.files import sha256_file
from covidct.preprocessing import preprocess_bytes
from covidct.samples import reference_samples


def test_two_real_slices_per_class_with_their_official_labels(real_data: Path) -> None:
    samples = reference_samples()
    assert Counter(s.class_name for s in samples) == {"Normal": 2, "Pneumonia": 2, "COVID-19": 2}
    official = {
        line.split()[0]: line.split()[1:]
        for line in (real_data / "covidxct-real" / "test_COVIDx-CT.txt").read_text().splitlines()
    }
    compared = 0
    for s in samples:
        source = real_data / "covidxct-real" / "images" / s.path.name
        if not source.is_file():  # the fixtures hold four of the six
            continue
        assert sha256_file(s.path) == sha256_file(source), s.path.name
        assert official[s.path.name] == [str(s.label), *map(str, s.box)]
        compared += 1
    assert compared >= 4


def test_every_slice_preprocesses_and_the_set_stays_small() -> None:
    samples = reference_samples()
    for s in samples:
        out = preprocess_bytes(s.path.read_bytes(), 64)
        assert out.image.shape == (64, 64, 1)
    assert sum(s.path.stat().st_size for s in samples) < 1_000_000
