"""The automatic body box used at serving: threshold, 3x3 opening, largest component, margin.

The compiled ``largest_open_component`` does the work; :func:`open_component_box` (NumPy) is its
reference and the fallback where no C compiler is at hand. Components are 4-connected and a tie
goes to the one whose first pixel comes first in raster order, as with ``scipy.ndimage.label``
(tests compare the three).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from covidct.preprocessing import kernels
from covidct.preprocessing.window import hu_to_grey_level

Box = tuple[int, int, int, int]
"""(xmin, ymin, xmax, ymax) in image pixels, xmax/ymax exclusive (COVIDx-CT convention)."""

#: Pixels brighter than this HU (after the window) are body or table; the largest connected
#: component after a 3x3 opening is the body. -350 HU lies between aerated lung (about -850)
#: and fat (about -100); tests/covidct/preprocessing/test_bodybox.py holds the boxes to the
#: official COVIDx-CT ones on the real slices the tests use (tests/conftest.py).
BODY_THRESHOLD_HU = -350.0
BODY_OPENING = 3
BODY_MARGIN = 1


@cache
def _body_level() -> int:
    return hu_to_grey_level(BODY_THRESHOLD_HU)


def auto_body_box(grey: np.ndarray) -> Box:
    """Find the body in a windowed slice: threshold, 3x3 opening, largest component, margin.

    The patient table is usually a separate, thinner component and is dropped with the
    rest. An image with no bright region yields the whole image. Only the rectangle holding
    bright pixels is opened and labelled (outside it everything is background before and after
    the opening): less work, the same box.

    Args:
        grey: uint8 ``[H, W]`` windowed slice.

    Returns:
        The body box, COVIDx-CT convention (exclusive max), clipped to the image.
    """
    h, w = grey.shape
    native = kernels.compiled  # read at each call: python_references() swaps it
    body = (
        native.largest_open_component(
            np.ascontiguousarray(grey, np.uint8), w, h, _body_level(), BODY_OPENING // 2
        )
        if native is not None
        else open_component_box(grey)
    )
    if body is None:
        return (0, 0, w, h)
    m = BODY_MARGIN
    return (max(0, body[0] - m), max(0, body[1] - m), min(w, body[2] + m), min(h, body[3] + m))


def open_component_box(grey: np.ndarray) -> Box | None:
    """The Python reference of the compiled body box (``_native.largest_open_component``).

    Args:
        grey: uint8 ``[H, W]`` windowed slice.

    Returns:
        The box of the largest component of the opened bright mask, in image coordinates;
        None when no bright pixel survives the opening.
    """
    mask = grey > _body_level()
    bright_box = _extent(mask)
    if bright_box is None:
        return None
    left, top, right, bottom = bright_box
    body = largest_component_box(_open_square(mask[top:bottom, left:right], BODY_OPENING // 2))
    if body is None:
        return None
    return (left + body[0], top + body[1], left + body[2], top + body[3])


def largest_component_box(mask: np.ndarray) -> Box | None:
    """The box (exclusive max) of the largest 4-connected component of ``mask``.

    Labels runs, not pixels: a body is a few runs per row where it is many pixels. Two runs in
    adjacent rows touch when their columns overlap; those pairs are found by binary search (runs
    are in raster order); union-find over the runs (hook the larger root of each touching pair
    to the smaller, then jump pointers until every run points at a root: its component's first
    run) takes a few rounds. Faster on a real slice than ``scipy.ndimage.label`` and a bincount
    over the pixels, and no SciPy in the gateway.

    Args:
        mask: boolean ``[H, W]``.

    Returns:
        The box; a tie goes to the component whose first pixel comes first in raster order.
        None when ``mask`` is empty.
    """
    h, w = mask.shape
    stride = w + 1
    padded = np.zeros((h, w + 2), bool)
    padded[:, 1:-1] = mask
    flips = np.flatnonzero(padded[:, 1:] != padded[:, :-1])  # each run's start, then its end
    n = len(flips) // 2
    if n == 0:
        return None
    starts, ends = flips[0::2], flips[1::2]  # flat positions, rows of stride w + 1
    row, start = np.divmod(starts, stride)
    end = ends - row * stride
    # The runs of the next row overlapping run i are the range [lo[i], hi[i]).
    below = (row + 1) * stride
    hi = np.searchsorted(starts, below + end, "left")
    lo = np.searchsorted(ends, below + start, "right")
    counts = np.maximum(hi - lo, 0)
    upper = np.repeat(np.arange(n), counts)
    lower = np.repeat(lo + counts - np.cumsum(counts), counts) + np.arange(len(upper))
    parent = np.arange(n)
    while len(upper):
        a, b = parent[upper], parent[lower]
        apart = a != b
        if not apart.any():
            break
        a, b, upper, lower = a[apart], b[apart], upper[apart], lower[apart]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
    sizes = np.bincount(parent, weights=end - start, minlength=n)
    body = parent == int(sizes.argmax())  # the first of the largest: the raster-first
    return (
        int(start[body].min()),
        int(row[body].min()),
        int(end[body].max()),
        int(row[body].max()) + 1,
    )


def _extent(mask: np.ndarray) -> Box | None:
    """The smallest box ``(xmin, ymin, xmax, ymax)`` (exclusive max) holding every true pixel
    of ``mask``; None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _open_square(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary opening with a (2r+1)² square, outside the image counted as background.

    Equal to ``ndimage.binary_opening`` with that structure (a test pins it) and faster: the
    square is separable, so erosion and dilation are two 1-D passes each over shifted views of
    one padded array.
    """
    if r == 0:
        return mask
    h, w = mask.shape
    pad = np.zeros((h + 2 * r, w + 2 * r), bool)
    core = (slice(r, r + h), slice(r, r + w))
    pad[core] = mask
    for combine in (np.logical_and, np.logical_or):  # erosion, then dilation
        for axis in (1, 0):
            out = pad[core].copy()
            for k in range(-r, r + 1):
                if k:
                    shifted = (
                        pad[r : r + h, r + k : r + k + w]
                        if axis
                        else pad[r + k : r + k + h, r : r + w]
                    )
                    combine(out, shifted, out=out)
            pad[core] = out
    return pad[core]
