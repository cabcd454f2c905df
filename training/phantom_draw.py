"""Drawing primitives of the synthetic CT phantom: soft disks, lines and ellipses on a grid.

The ``*_field`` functions max-composite a soft shape (1 at its centre, falling off as a
Gaussian) into a float image, touching only the patch around it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx) of a size x size image, as float32; shared, not to be changed."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth N(0, ~1) noise: a cells x cells grid upsampled bicubically (Pillow: fast)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def patch(cx: float, cy: float, r: float, size: int) -> tuple[slice, slice] | None:
    """The (rows, columns) slices around a circle of radius r at (cx, cy), clipped to the
    image; None when nothing of it lies inside."""
    y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def segment_field(
    field: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float
) -> None:
    """Max-composite a soft line of the given width from p to q (x, y) into ``field``."""
    size = field.shape[0]
    r = width * 3
    sl = (
        slice(max(0, int(min(p[1], q[1]) - r)), min(size, int(max(p[1], q[1]) + r) + 2)),
        slice(max(0, int(min(p[0], q[0]) - r)), min(size, int(max(p[0], q[0]) + r) + 2)),
    )
    if sl[0].start >= sl[0].stop or sl[1].start >= sl[1].stop:
        return
    yy, xx = np.ogrid[sl[0], sl[1]]
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((xx - p[0]) * dx + (yy - p[1]) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    d2 = (xx - p[0] - t * dx) ** 2 + (yy - p[1] - t * dy) ** 2
    np.maximum(field[sl], np.exp(-d2 / (2 * width * width)), out=field[sl])


def disk_field(field: np.ndarray, cx: float, cy: float, radius: float) -> None:
    """Max-composite a soft disk (a Gaussian of sigma ``radius``) at (cx, cy) into ``field``."""
    sl = patch(cx, cy, radius * 2.5, field.shape[0])
    if sl is None:
        return
    yy, xx = np.ogrid[sl[0], sl[1]]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    np.maximum(field[sl], np.exp(-d2 / (2 * radius * radius)), out=field[sl])


def ellipse(cx: float, cy: float, rx: float, ry: float, size: int) -> np.ndarray:
    """The mask of the axis-aligned ellipse with centre (cx, cy) and half-axes rx, ry."""
    yy, xx = grid(size)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
