"""A synthetic axial chest CT slice in Hounsfield units, windowed like COVIDx-CT.

Each patient gets an anatomy (body outline with fat and muscle, patient table, spine,
ribs, sternum, both lungs with vessels and airways, heart, aorta, trachea) and, by class,
disease: none (Normal); lobar or segmental consolidation with air bronchograms, often
one-sided (Pneumonia); bilateral, peripheral, multifocal ground-glass opacities, some with
crazy paving (COVID-19). Slices of one patient move from apex to base, so lung size,
heart, trachea and lesions change along the series. Everything is rendered in Hounsfield
units with correlated noise, then windowed with the COVIDx-CT recipe
(:func:`covidct.preprocessing.window_to_uint8`). ``training.synth`` plans the cohort and
writes the folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from covidct.config import CLASS_NAMES
from covidct.preprocessing import window_to_uint8

#: COVIDx-CT (CNCB) file-name prefixes by class: ``NCP_96_1328_0032.png``.
PREFIXES = ("Normal", "CP", "NCP")

AIR, FAT, MUSCLE, SOFT, BLOOD = -1000.0, -100.0, 45.0, 35.0, 40.0


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


@dataclass(frozen=True)
class Patient:
    index: int
    label: int
    split: str
    seed: int

    @property
    def patient_id(self) -> str:
        return f"{PREFIXES[self.label]}_{self.index + 1}"

    def filename(self, slice_index: int) -> str:
        return f"{self.patient_id}_{1000 + self.index}_{slice_index:04d}.png"


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth N(0, ~1) noise: a cells x cells grid upsampled bicubically (Pillow: fast)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _patch(cx: float, cy: float, r: float, size: int) -> tuple[slice, slice] | None:
    y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _segment_field(
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


def _disk_field(field: np.ndarray, cx: float, cy: float, radius: float) -> None:
    sl = _patch(cx, cy, radius * 2.5, field.shape[0])
    if sl is None:
        return
    yy, xx = np.ogrid[sl[0], sl[1]]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    np.maximum(field[sl], np.exp(-d2 / (2 * radius * radius)), out=field[sl])


def _ellipse(cx: float, cy: float, rx: float, ry: float, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0


class _Anatomy:
    """Per-patient anatomy parameters, all drawn from the patient's own generator."""

    def __init__(self, patient: Patient, size: int) -> None:
        rng = np.random.default_rng([patient.seed, 1, patient.index])
        s = size / 512.0
        self.size = size
        self.a = size * rng.uniform(0.34, 0.52)  # half-width; > 0.5 leaves the field of view
        self.b = self.a * rng.uniform(0.58, 0.78)
        self.cx = size / 2 + rng.normal(0, 10 * s)
        self.cy = size * rng.uniform(0.42, 0.50)
        self.harm = [(k, rng.uniform(0, 0.025), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4, 5)]
        self.fat = rng.uniform(0.02, 0.09)
        self.muscle = rng.uniform(0.03, 0.06)
        self.gap = rng.uniform(0.08, 0.14)  # mediastinum half-width / a
        inner = 1 - self.fat - self.muscle - 0.06
        self.lung_w = (inner - self.gap) / 2 * rng.uniform(0.86, 0.97)
        self.lung_h = rng.uniform(0.62, 0.74)
        self.lung_dy = rng.uniform(-0.04, 0.06)
        self.heart = rng.uniform(0.85, 1.15)
        self.table_gap = rng.uniform(6, 22) * s
        self.table_curv = rng.uniform(0.0004, 0.0010) / s
        self.noise = rng.uniform(10, 38)
        self.lung_hu = rng.uniform(-885, -820)
        self.soft_hu = rng.uniform(28, 50)
        self.vessels = int(rng.integers(18, 34))
        self.z0 = rng.uniform(0.15, 0.35)
        self.z1 = rng.uniform(0.7, 0.9)
        self.lesions = _draw_lesions(patient, rng)


def _draw_lesions(patient: Patient, rng: np.random.Generator) -> tuple[Lesion, ...]:
    name = CLASS_NAMES[patient.label]
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


def render_slice(
    patient: Patient, slice_index: int, n_slices: int, size: int = 512
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Render one slice as windowed uint8 ``[size, size]`` and its body box (COVIDx-CT)."""
    an = _Anatomy(patient, size)
    rng = np.random.default_rng([patient.seed, 2, patient.index, slice_index])
    z = an.z0 + (an.z1 - an.z0) * (slice_index + 0.5) / max(n_slices, 1)
    yy, xx = _grid(size)
    s = size / 512.0
    hu = np.full((size, size), AIR, np.float32)

    # Body: an ellipse with a wobbly outline; fat, muscle and soft tissue by depth.
    a, b = an.a * (0.96 + 0.06 * z), an.b * (0.96 + 0.06 * z)
    dx, dy = xx - an.cx, yy - an.cy
    theta = np.arctan2(dy / b, dx / a)
    wobble = 1 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in an.harm)
    rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2) / wobble
    body = rho < 1
    hu[body] = an.soft_hu
    hu[(rho < 1) & (rho >= 1 - an.fat)] = (
        FAT + 15 * _smooth_noise(rng, (size, size), 24)[(rho < 1) & (rho >= 1 - an.fat)]
    )
    hu[(rho < 1 - an.fat) & (rho >= 1 - an.fat - an.muscle)] = MUSCLE
    ys, xs = np.nonzero(body)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    # Patient table: a curved tray (two shells and foam) below the body, never touching it.
    bottom = box[3] - 1
    y_tab = bottom + an.table_gap - an.table_curv * (xx - an.cx) ** 2
    d = yy - y_tab
    tray = (np.abs(xx - an.cx) < 0.47 * size) & ~body
    hu[tray & (d > 0) & (d < 3 * s)] = 250
    hu[tray & (d >= 3 * s) & (d < 12 * s)] = -850
    hu[tray & (d >= 12 * s) & (d < 15 * s)] = 250

    # Lungs: two superellipses, growing from apex to base, hollowed by the heart.
    grow = math.sin(math.pi * min(max(z, 0.05), 0.95)) ** 0.5
    lw, lh = a * an.lung_w * (0.55 + 0.45 * grow), b * an.lung_h * (0.6 + 0.4 * grow)
    ly = an.cy + b * an.lung_dy
    heart = None
    if z > 0.42:
        hs = an.heart * min(1.0, (z - 0.42) / 0.25)
        heart = _ellipse(
            an.cx + 0.12 * a, an.cy - 0.02 * b, 0.30 * a * hs + 1, 0.36 * b * hs + 1, size
        )
    lungs = np.zeros((size, size), bool)
    centres = {}
    for side in (-1, 1):
        lx = an.cx + side * (an.gap * a + lw)
        centres[side] = (lx, ly)
        edge = 1 + 0.04 * _smooth_noise(rng, (size, size), 10)
        shape = (np.abs(xx - lx) / lw) ** 2.4 + (np.abs(yy - ly) / lh) ** 2.2 < edge
        if z > 0.82 and side == -1:  # the liver dome rises into the right lung base
            shape &= ~_ellipse(lx + 0.2 * lw, ly + lh * (1.9 - (z - 0.82) * 4), lw * 1.3, lh, size)
        lungs |= shape
    if heart is not None:
        lungs &= ~ndimage.binary_dilation(heart, iterations=max(1, int(3 * s)))
    tex = 18 * _smooth_noise(rng, (size, size), 64)
    parenchyma = an.lung_hu + tex + 35 * np.clip((yy - ly) / lh, -1, 1)  # dependent density
    hu[lungs] = parenchyma[lungs]

    # Disease, then vessels on top (vessels stay visible in ground glass).
    _render_lesions(hu, lungs, an, centres, lw, lh, z, size)
    vessels = np.zeros((size, size), np.float32)
    wall = np.zeros((size, size), np.float32)
    lumen = np.zeros((size, size), np.float32)
    for side, (lx, lyc) in centres.items():
        hx, hy = lx - side * 0.55 * lw, lyc - 0.05 * lh  # hilum
        for _ in range(an.vessels):
            # Vessels taper from the hilum outwards: short radial branches and dots.
            ang = rng.uniform(0, 2 * math.pi)
            reach = rng.uniform(0.15, 1.0)
            px, py = hx + math.cos(ang) * lw * reach * 1.5, hy + math.sin(ang) * lh * reach
            radius = max((3.4 - 2.6 * reach) * s, 0.7)
            _disk_field(vessels, px, py, radius)
            if rng.random() < 0.6:
                step = rng.uniform(0.12, 0.3)
                bend = ang + rng.normal(0, 0.35)
                q = (px + math.cos(bend) * lw * step * 1.5, py + math.sin(bend) * lh * step)
                _segment_field(vessels, (px, py), q, radius * 0.75)
        for _ in range(int(rng.integers(2, 5))):  # bronchi in cross-section: wall around air
            ang = rng.uniform(0, 2 * math.pi)
            reach = rng.uniform(0.1, 0.5)
            ax, ay = hx + math.cos(ang) * lw * reach, hy + math.sin(ang) * lh * reach
            r = rng.uniform(2.0, 3.5) * s
            _disk_field(wall, ax, ay, r * 0.9)
            _disk_field(lumen, ax, ay, r * 0.45)
    hu += vessels * lungs * (BLOOD - hu)
    hu[(wall > 0.5) & lungs] = 10
    hu[(lumen > 0.5) & lungs] = AIR

    # Mediastinum: heart, aorta, trachea; spine, ribs, sternum.
    if heart is not None:
        hu[heart & body] = BLOOD
    aorta_r = 0.07 * a
    hu[_ellipse(an.cx + 0.14 * a, an.cy + 0.28 * b, aorta_r, aorta_r, size)] = BLOOD
    if z < 0.45:
        tr = 0.05 * a
        ty = an.cy - 0.05 * b
        hu[_ellipse(an.cx, ty, tr + 2 * s, tr + 2 * s, size)] = 30
        hu[_ellipse(an.cx, ty, tr, tr * 0.9, size)] = AIR
    else:
        hu[_ellipse(an.cx - 0.1 * a, an.cy + 0.05 * b, 0.09 * a, 0.12 * b, size)] = BLOOD
    vb_r = 0.075 * a
    vy = an.cy + b * 0.62
    hu[_ellipse(an.cx, vy, vb_r, vb_r * 0.9, size)] = 700
    hu[_ellipse(an.cx, vy, vb_r * 0.8, vb_r * 0.7, size)] = 230
    hu[_ellipse(an.cx, vy + vb_r * 1.55, vb_r * 0.5, vb_r * 0.45, size)] = 20
    hu[_ellipse(an.cx, vy + vb_r * 2.4, vb_r * 0.25, vb_r * 0.6, size)] = 550
    for side in (-1, 1):
        hu[_ellipse(an.cx + side * vb_r * 1.4, vy + vb_r * 1.2, vb_r * 0.7, vb_r * 0.25, size)] = (
            450
        )
    hu[_ellipse(an.cx, an.cy - b * (0.86 - an.fat - an.muscle), 0.06 * a, 0.035 * b, size)] = 450
    ribs = np.zeros((size, size), np.float32)
    rib_rho = 1 - an.fat - an.muscle * 0.5
    for side in (-1, 1):
        for k in range(int(rng.integers(6, 9))):
            ang = math.radians(-60 + k * 20 + rng.normal(0, 3))
            rx = an.cx + side * a * rib_rho * math.cos(ang) * 0.97
            ry = an.cy + b * rib_rho * math.sin(ang) * 0.95
            _disk_field(ribs, rx, ry, 3.2 * s)
    rib = (ribs > 0.4) & body
    hu[rib] = 150 + 550 * ribs[rib]  # cortex bright, marrow darker

    # Partial volume blur, then correlated noise inside the body.
    hu = ndimage.gaussian_filter(hu, 0.7 * s)
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.8)
    hu += (an.noise * 2.2) * noise * (body | tray)
    return window_to_uint8(hu), box


def _render_lesions(
    hu: np.ndarray,
    lungs: np.ndarray,
    an: _Anatomy,
    centres: dict[int, tuple[float, float]],
    lw: float,
    lh: float,
    z: float,
    size: int,
) -> None:
    for les in an.lesions:
        lx, ly = centres[les.side]
        cx = lx + les.side * les.u * lw
        cy = ly + les.v * lh
        extent = math.sqrt(max(0.45, 1 - ((z - les.zc) / 0.45) ** 2))  # never vanishes
        r = les.radius * lw * extent
        sl = _patch(cx, cy, r * 1.6, size)
        if sl is None:
            continue
        lrng = np.random.default_rng([les.seed, int(z * 1000)])
        yy, xx = np.ogrid[sl[0], sl[1]]
        shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / (r * 0.85)) ** 2)
        blob = 1 - d + 0.25 * _smooth_noise(lrng, shape, 5)
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
                _segment_field(
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
