"""The disease of a synthetic slice: lesions drawn per patient, rendered per slice.

Pneumonia: lobar or segmental consolidation bounded by a fissure, with air bronchograms,
often one-sided. COVID-19: bilateral, peripheral, multifocal ground-glass opacities, some
with crazy paving. A lesion is fixed in lung-relative coordinates, so it follows the lung
along the series (``training.phantom``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from covidct.config import CLASS_NAMES
from training.phantom_draw import patch, segment_field, smooth_noise


@dataclass(frozen=True)
class Lesion:
    """A lesion fixed in lung-relative coordinates, so it follows the lung along the series."""

    kind: str  # "consolidation" | "ggo" | "crazy"
    side: int  # -1: image-left lung (patient's right), +1: image-right lung
    u: float  # lateral position in the lung, -1 (medial) .. 1 (lateral)
    v: float  # -1 (anterior) .. 1 (posterior)
    radius: float  # fraction of the lung half-width
    zc: float  # slice level of largest extent
    seed: int


def draw_lesions(label: int, rng: np.random.Generator) -> tuple[Lesion, ...]:
    """A patient's lesions by class: none for Normal, drawn from the patient's generator.

    Args:
        label: the class index (``covidct.config.CLASS_NAMES``).
        rng: the patient's anatomy generator; its draws follow the anatomy's.
    """
    name = CLASS_NAMES[label]
    out: list[Lesion] = []
    if name == "Pneumonia":
        sides = [int(rng.choice([-1, 1]))]
        if rng.random() < 0.3:
            sides.append(-sides[0])
        for side in sides:
            out.append(
                Lesion(
                    "consolidation",
                    side,
                    rng.uniform(-0.1, 0.5),
                    rng.uniform(0.0, 0.7),
                    rng.uniform(0.6, 1.0),
                    rng.uniform(0.3, 0.8),
                    int(rng.integers(1 << 31)),
                )
            )
    elif name == "COVID-19":
        n = int(rng.integers(3, 9))
        for i in range(n):
            side = (-1, 1)[i % 2]  # bilateral by construction
            ang = rng.uniform(0, 2 * math.pi)
            rad = rng.uniform(0.62, 0.85)  # peripheral: near the pleura
            kind = "crazy" if rng.random() < 0.35 else "ggo"
            out.append(
                Lesion(
                    kind,
                    side,
                    abs(math.cos(ang)) * rad,
                    math.sin(ang) * rad,
                    rng.uniform(0.26, 0.48),
                    rng.uniform(0.2, 0.9),
                    int(rng.integers(1 << 31)),
                )
            )
    return tuple(out)


def render_lesions(
    hu: np.ndarray,
    lungs: np.ndarray,
    lesions: tuple[Lesion, ...],
    centres: dict[int, tuple[float, float]],
    lw: float,
    lh: float,
    z: float,
    size: int,
) -> None:
    """Draw ``lesions`` into the HU image ``hu``, inside ``lungs``, at slice level ``z``.

    Args:
        hu: the slice in Hounsfield units, changed in place.
        lungs: the lung mask.
        lesions: the patient's lesions (:func:`draw_lesions`).
        centres: each lung's centre (x, y) by side (-1, +1).
        lw, lh: the lungs' half-width and half-height in this slice.
        z: the slice level.
        size: the slice size in pixels.
    """
    for les in lesions:
        lx, ly = centres[les.side]
        cx = lx + les.side * les.u * lw
        cy = ly + les.v * lh
        extent = math.sqrt(max(0.45, 1 - ((z - les.zc) / 0.45) ** 2))  # never vanishes
        r = les.radius * lw * extent
        sl = patch(cx, cy, r * 1.6, size)
        if sl is None:
            continue
        lrng = np.random.default_rng([les.seed, int(z * 1000)])
        yy, xx = np.ogrid[sl[0], sl[1]]
        shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / (r * 0.85)) ** 2)
        blob = 1 - d + 0.25 * smooth_noise(lrng, shape, 5)
        alpha = np.clip(blob / 0.25, 0, 1) * lungs[sl]
        region = hu[sl]
        if les.kind == "consolidation":
            target = np.float32(lrng.uniform(20, 45))
            # Lobar or segmental: a fissure (a straight line) bounds the consolidation.
            fa = lrng.uniform(0, 2 * math.pi)
            off = lrng.uniform(0.2, 0.6) * r
            side_of = (xx - cx) * math.cos(fa) + (yy - cy) * math.sin(fa) < off
            alpha = alpha * side_of
            dense = region + alpha * (target - region)
            # Air bronchograms: branching air lines through the consolidation.
            air = np.zeros((size, size), np.float32)
            hx, hy = lx - les.side * 0.55 * lw, ly
            for _ in range(int(lrng.integers(3, 7))):
                ang = math.atan2(cy - hy, cx - hx) + lrng.normal(0, 0.5)
                length = r * lrng.uniform(0.6, 1.3)
                p = (cx - math.cos(ang) * r * 0.5, cy - math.sin(ang) * r * 0.5)
                segment_field(
                    air,
                    p,
                    (p[0] + math.cos(ang) * length, p[1] + math.sin(ang) * length),
                    lrng.uniform(0.9, 1.6),
                )
            core = air[sl] * (alpha > 0.8)
            hu[sl] = dense + core * (-900 - dense)
        else:
            target = np.float32(lrng.uniform(-640, -480))
            ggo = region + alpha * 0.9 * (target - region)
            if les.kind == "crazy":
                ggo += 110 * _septa(lrng, shape, r) * (alpha > 0.5)
            hu[sl] = ggo


def _septa(rng: np.random.Generator, shape: tuple[int, int], r: float) -> np.ndarray:
    """Polygonal interlobular septa: boundaries between Voronoi cells of random seeds."""
    n = max(6, int((shape[0] * shape[1]) / (r * r) * 3))
    pts = rng.uniform((0, 0), shape, size=(n, 2)).astype(np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    cell = d.argmin(axis=-1)
    edge = np.zeros(shape, bool)
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    return edge.astype(np.float32)
