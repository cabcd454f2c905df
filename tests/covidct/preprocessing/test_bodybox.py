"""The automatic body box against the official COVIDx-CT boxes and against SciPy, and the
run-based labeller behind it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.corpus import real_pngs
from covidct import preprocessing as pp
from covidct.preprocessing import auto_body_box


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_auto_body_box_matches_official_boxes(real_data: Path) -> None:
    root = real_data / "covidxct-real"
    ious = []
    for line in (root / "test_COVIDx-CT.txt").read_text().splitlines():
        name, _, *box = line.split()
        grey = np.asarray(Image.open(root / "images" / name))
        ious.append(iou(auto_body_box(grey), tuple(map(int, box))))
    assert len(ious) == len(real_pngs(real_data)) >= 5
    assert np.mean(ious) >= 0.95
    assert min(ious) >= 0.9


def test_auto_body_box_finds_synthetic_bodies_not_the_table(synth_dir: Path) -> None:
    from covidct.dataset import read_covidx

    ds = read_covidx(synth_dir)
    for samples in ds.splits.values():
        for s in samples:
            grey = np.asarray(Image.open(ds.image_path(s)))
            assert iou(auto_body_box(grey), s.box) >= 0.9, s.filename


def _scipy_largest_component(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    rows, cols = np.nonzero(labels == sizes.argmax())
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def _scipy_body_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """The body box as first written (SciPy): what :func:`auto_body_box` must reproduce."""
    from scipy import ndimage

    h, w = grey.shape
    square = np.ones((pp.BODY_OPENING,) * 2, bool)
    mask = ndimage.binary_opening(grey > pp.hu_to_grey_level(pp.BODY_THRESHOLD_HU), square)
    body = _scipy_largest_component(mask)
    if body is None:
        return (0, 0, w, h)
    m = pp.BODY_MARGIN
    return (
        max(0, body[0] - m),
        max(0, body[1] - m),
        min(w, body[2] + m),
        min(h, body[3] + m),
    )


def test_body_box_equals_scipy_reference_on_real_slices(real_data: Path) -> None:
    for path in real_pngs(real_data):
        grey = np.asarray(Image.open(path))
        assert auto_body_box(grey) == _scipy_body_box(grey), path.name


def test_body_box_equals_scipy_reference_on_random_masks() -> None:
    """Borders, diagonal contacts, ties of equal components: random blobs of every density."""
    rng = np.random.default_rng(7)
    level = pp.hu_to_grey_level(pp.BODY_THRESHOLD_HU)
    for shape in [(37, 53), (16, 16), (64, 9), (128, 96)]:
        for density in (0.2, 0.5, 0.7, 0.9):
            for _ in range(10):
                grey = np.where(rng.random(shape) < density, 255, level).astype(np.uint8)
                assert auto_body_box(grey) == _scipy_body_box(grey), (shape, density)


def _serpentine(n: int) -> np.ndarray:
    """Columns 3 wide joined alternately at the bottom and the top: one long chain of runs."""
    mask = np.zeros((n, n), bool)
    for c in range(0, n, 6):
        mask[:, c : c + 3] = True
        rows = slice(n - 3, n) if (c // 6) % 2 == 0 else slice(0, 3)
        mask[rows, c : c + 9] = True
    return mask


def test_run_labelling_equals_scipy_label() -> None:
    """Unopened random masks (single pixels, diagonal contacts, rows full of short runs) and
    shapes whose runs chain far: the run-based labeller finds scipy's largest component."""
    rng = np.random.default_rng(11)
    masks = [
        rng.random(shape) < density
        for shape in [(1, 40), (40, 1), (7, 7), (37, 53), (64, 9), (128, 96)]
        for density in (0.05, 0.3, 0.5, 0.6, 0.8, 1.0)
        for _ in range(8)
    ]
    checker = np.indices((64, 80)).sum(axis=0) % 2 == 0  # no two pixels 4-connected
    masks += [checker, _serpentine(256), _serpentine(256).T, np.zeros((9, 9), bool)]
    for i, mask in enumerate(masks):
        assert pp.largest_component_box(mask) == _scipy_largest_component(mask), i


def test_body_box_tie_goes_to_first_component_in_raster_order() -> None:
    grey = np.zeros((20, 20), np.uint8)
    grey[12:17, 1:6] = 255  # 5x5, first pixel at row 12
    grey[2:7, 10:15] = 255  # 5x5, first pixel at row 2: comes first
    assert auto_body_box(grey) == _scipy_body_box(grey) == (9, 1, 16, 8)


def test_blank_image_box_is_whole_image() -> None:
    assert auto_body_box(np.zeros((100, 120), np.uint8)) == (0, 0, 120, 100)
