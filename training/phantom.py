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

The disease lives in ``training.phantom_lesions``, the drawing primitives in
``training.phantom_draw``; :func:`render_slice` draws a slice in named phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.preprocessing import window_to_uint8
from training.phantom_draw import disk_field, ellipse, grid, segment_field, smooth_noise
from training.phantom_lesions import draw_lesions, render_lesions

#: COVIDx-CT (CNCB) file-name prefixes by class: ``NCP_96_1328_0032.png``.
PREFIXES = ("Normal", "CP", "NCP")

AIR, FAT, MUSCLE, SOFT, BLOOD = -1000.0, -100.0, 45.0, 35.0, 40.0


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
        self.lesions = draw_lesions(patient.label, rng)


@dataclass(frozen=True)
class _Frame:
    """One slice of one patient: its level and the body's half-axes at that level."""

    an: _Anatomy
    z: float  # level along the series: an.z0 (apex side) .. an.z1 (base side)
    a: float  # body half-width at this level
    b: float  # body half-height at this level

    @property
    def size(self) -> int:
        return self.an.size

    @property
    def s(self) -> float:
        """Pixel scale relative to a 512-pixel slice."""
        return self.size / 512.0


def render_slice(
    patient: Patient, slice_index: int, n_slices: int, size: int = 512
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Render one slice as windowed uint8 ``[size, size]`` and its body box (COVIDx-CT).

    The phases draw from one generator in a fixed order (body, lungs, vessels, bones, noise),
    so a patient, slice and size always give the same bytes.
    """
    an = _Anatomy(patient, size)
    rng = np.random.default_rng([patient.seed, 2, patient.index, slice_index])
    z = an.z0 + (an.z1 - an.z0) * (slice_index + 0.5) / max(n_slices, 1)
    frame = _Frame(an, z, an.a * (0.96 + 0.06 * z), an.b * (0.96 + 0.06 * z))
    hu = np.full((size, size), AIR, np.float32)
    body, box = _draw_body(hu, frame, rng)
    tray = _draw_table(hu, frame, body, box)
    lungs, heart, centres, lw, lh = _draw_lungs(hu, frame, rng)
    # Disease, then vessels on top (vessels stay visible in ground glass).
    render_lesions(hu, lungs, an.lesions, centres, lw, lh, z, size)
    _draw_vessels_and_bronchi(hu, frame, rng, lungs, centres, lw, lh)
    _draw_mediastinum(hu, frame, body, heart)
    _draw_ribs(hu, frame, rng, body)
    return window_to_uint8(_scan(hu, frame, rng, body | tray)), box


def _draw_body(
    hu: np.ndarray, f: _Frame, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Body: an ellipse with a wobbly outline; fat, muscle and soft tissue by depth.

    Returns:
        The body mask and its box (COVIDx-CT convention, max exclusive).
    """
    an, size = f.an, f.size
    yy, xx = grid(size)
    dx, dy = xx - an.cx, yy - an.cy
    theta = np.arctan2(dy / f.b, dx / f.a)
    wobble = 1 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in an.harm)
    rho = np.sqrt((dx / f.a) ** 2 + (dy / f.b) ** 2) / wobble
    body = rho < 1
    hu[body] = an.soft_hu
    hu[(rho < 1) & (rho >= 1 - an.fat)] = (
        FAT + 15 * smooth_noise(rng, (size, size), 24)[(rho < 1) & (rho >= 1 - an.fat)]
    )
    hu[(rho < 1 - an.fat) & (rho >= 1 - an.fat - an.muscle)] = MUSCLE
    ys, xs = np.nonzero(body)
    return body, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _draw_table(
    hu: np.ndarray, f: _Frame, body: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Patient table: a curved tray (two shells and foam) below the body, never touching it.

    Returns:
        The tray's mask (the scanner noise covers it too).
    """
    an, s = f.an, f.s
    yy, xx = grid(f.size)
    bottom = box[3] - 1
    y_tab = bottom + an.table_gap - an.table_curv * (xx - an.cx) ** 2
    d = yy - y_tab
    tray = (np.abs(xx - an.cx) < 0.47 * f.size) & ~body
    hu[tray & (d > 0) & (d < 3 * s)] = 250
    hu[tray & (d >= 3 * s) & (d < 12 * s)] = -850
    hu[tray & (d >= 12 * s) & (d < 15 * s)] = 250
    return tray


def _draw_lungs(
    hu: np.ndarray, f: _Frame, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, dict[int, tuple[float, float]], float, float]:
    """Lungs: two superellipses, growing from apex to base, hollowed by the heart.

    Returns:
        The lung mask, the heart mask (None above the heart), each lung's centre by side,
        and the lungs' half-width and half-height.
    """
    an, size, z, a, b = f.an, f.size, f.z, f.a, f.b
    yy, xx = grid(size)
    grow = math.sin(math.pi * min(max(z, 0.05), 0.95)) ** 0.5
    lw, lh = a * an.lung_w * (0.55 + 0.45 * grow), b * an.lung_h * (0.6 + 0.4 * grow)
    ly = an.cy + b * an.lung_dy
    heart = None
    if z > 0.42:
        hs = an.heart * min(1.0, (z - 0.42) / 0.25)
        heart = ellipse(
            an.cx + 0.12 * a, an.cy - 0.02 * b, 0.30 * a * hs + 1, 0.36 * b * hs + 1, size
        )
    lungs = np.zeros((size, size), bool)
    centres = {}
    for side in (-1, 1):
        lx = an.cx + side * (an.gap * a + lw)
        centres[side] = (lx, ly)
        edge = 1 + 0.04 * smooth_noise(rng, (size, size), 10)
        shape = (np.abs(xx - lx) / lw) ** 2.4 + (np.abs(yy - ly) / lh) ** 2.2 < edge
        if z > 0.82 and side == -1:  # the liver dome rises into the right lung base
            shape &= ~ellipse(lx + 0.2 * lw, ly + lh * (1.9 - (z - 0.82) * 4), lw * 1.3, lh, size)
        lungs |= shape
    if heart is not None:
        lungs &= ~ndimage.binary_dilation(heart, iterations=max(1, int(3 * f.s)))
    tex = 18 * smooth_noise(rng, (size, size), 64)
    parenchyma = an.lung_hu + tex + 35 * np.clip((yy - ly) / lh, -1, 1)  # dependent density
    hu[lungs] = parenchyma[lungs]
    return lungs, heart, centres, lw, lh


def _draw_vessels_and_bronchi(
    hu: np.ndarray,
    f: _Frame,
    rng: np.random.Generator,
    lungs: np.ndarray,
    centres: dict[int, tuple[float, float]],
    lw: float,
    lh: float,
) -> None:
    """Vessels branching from each hilum, and bronchi in cross-section, inside the lungs."""
    size, s = f.size, f.s
    vessels = np.zeros((size, size), np.float32)
    wall = np.zeros((size, size), np.float32)
    lumen = np.zeros((size, size), np.float32)
    for side, (lx, lyc) in centres.items():
        hx, hy = lx - side * 0.55 * lw, lyc - 0.05 * lh  # hilum
        for _ in range(f.an.vessels):
            # Vessels taper from the hilum outwards: short radial branches and dots.
            ang = rng.uniform(0, 2 * math.pi)
            reach = rng.uniform(0.15, 1.0)
            px, py = hx + math.cos(ang) * lw * reach * 1.5, hy + math.sin(ang) * lh * reach
            radius = max((3.4 - 2.6 * reach) * s, 0.7)
            disk_field(vessels, px, py, radius)
            if rng.random() < 0.6:
                step = rng.uniform(0.12, 0.3)
                bend = ang + rng.normal(0, 0.35)
                q = (px + math.cos(bend) * lw * step * 1.5, py + math.sin(bend) * lh * step)
                segment_field(vessels, (px, py), q, radius * 0.75)
        for _ in range(int(rng.integers(2, 5))):  # bronchi in cross-section: wall around air
            ang = rng.uniform(0, 2 * math.pi)
            reach = rng.uniform(0.1, 0.5)
            ax, ay = hx + math.cos(ang) * lw * reach, hy + math.sin(ang) * lh * reach
            r = rng.uniform(2.0, 3.5) * s
            disk_field(wall, ax, ay, r * 0.9)
            disk_field(lumen, ax, ay, r * 0.45)
    hu += vessels * lungs * (BLOOD - hu)
    hu[(wall > 0.5) & lungs] = 10
    hu[(lumen > 0.5) & lungs] = AIR


def _draw_mediastinum(
    hu: np.ndarray, f: _Frame, body: np.ndarray, heart: np.ndarray | None
) -> None:
    """Mediastinum: heart, aorta, trachea (upper slices) or vena cava; spine and sternum."""
    an, size, a, b, s = f.an, f.size, f.a, f.b, f.s
    if heart is not None:
        hu[heart & body] = BLOOD
    aorta_r = 0.07 * a
    hu[ellipse(an.cx + 0.14 * a, an.cy + 0.28 * b, aorta_r, aorta_r, size)] = BLOOD
    if f.z < 0.45:
        tr = 0.05 * a
        ty = an.cy - 0.05 * b
        hu[ellipse(an.cx, ty, tr + 2 * s, tr + 2 * s, size)] = 30
        hu[ellipse(an.cx, ty, tr, tr * 0.9, size)] = AIR
    else:
        hu[ellipse(an.cx - 0.1 * a, an.cy + 0.05 * b, 0.09 * a, 0.12 * b, size)] = BLOOD
    vb_r = 0.075 * a
    vy = an.cy + b * 0.62
    hu[ellipse(an.cx, vy, vb_r, vb_r * 0.9, size)] = 700
    hu[ellipse(an.cx, vy, vb_r * 0.8, vb_r * 0.7, size)] = 230
    hu[ellipse(an.cx, vy + vb_r * 1.55, vb_r * 0.5, vb_r * 0.45, size)] = 20
    hu[ellipse(an.cx, vy + vb_r * 2.4, vb_r * 0.25, vb_r * 0.6, size)] = 550
    for side in (-1, 1):
        hu[ellipse(an.cx + side * vb_r * 1.4, vy + vb_r * 1.2, vb_r * 0.7, vb_r * 0.25, size)] = 450
    hu[ellipse(an.cx, an.cy - b * (0.86 - an.fat - an.muscle), 0.06 * a, 0.035 * b, size)] = 450


def _draw_ribs(hu: np.ndarray, f: _Frame, rng: np.random.Generator, body: np.ndarray) -> None:
    """Ribs along the inner edge of the muscle: cortex bright, marrow darker."""
    an, size, a, b = f.an, f.size, f.a, f.b
    ribs = np.zeros((size, size), np.float32)
    rib_rho = 1 - an.fat - an.muscle * 0.5
    for side in (-1, 1):
        for k in range(int(rng.integers(6, 9))):
            ang = math.radians(-60 + k * 20 + rng.normal(0, 3))
            rx = an.cx + side * a * rib_rho * math.cos(ang) * 0.97
            ry = an.cy + b * rib_rho * math.sin(ang) * 0.95
            disk_field(ribs, rx, ry, 3.2 * f.s)
    rib = (ribs > 0.4) & body
    hu[rib] = 150 + 550 * ribs[rib]


def _scan(hu: np.ndarray, f: _Frame, rng: np.random.Generator, inside: np.ndarray) -> np.ndarray:
    """What the scanner adds: partial volume blur, then correlated noise inside ``inside``."""
    hu = ndimage.gaussian_filter(hu, 0.7 * f.s)
    noise = ndimage.gaussian_filter(rng.standard_normal((f.size, f.size)).astype(np.float32), 0.8)
    hu += (f.an.noise * 2.2) * noise * inside
    return hu
