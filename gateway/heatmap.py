"""The CAM of the predicted class as a PNG overlay in the uploaded slice's coordinates."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from covidct.preprocessing import Box


def overlay_png(grey: np.ndarray, cam: np.ndarray, box: Box, alpha: float = 0.45) -> str:
    """Colour the class map over the body box of ``grey``; return base64 PNG.

    Args:
        grey: the decoded slice ``[H, W]`` uint8.
        cam: the class activation map ``[h, w]`` of one class.
        box: where the model's input came from (xmin, ymin, xmax, ymax).
    """
    xmin, ymin, xmax, ymax = box
    lo, hi = float(cam.min()), float(cam.max())
    norm = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize(
        (xmax - xmin, ymax - ymin), Image.Resampling.BILINEAR
    )
    h = np.asarray(heat, dtype=np.float32) / 255.0
    # A simple blue -> yellow -> red ramp; no matplotlib on the request path.
    colour = (
        np.stack(
            [
                np.clip(2 * h, 0, 1),
                np.clip(2 - 2 * h, 0, 1) * np.clip(2 * h, 0, 1),
                np.clip(1 - 2 * h, 0, 1),
            ],
            axis=-1,
        )
        * 255
    )
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    region = rgb[ymin:ymax, xmin:xmax]
    weight = alpha * h[:, :, None]
    rgb[ymin:ymax, xmin:xmax] = region * (1 - weight) + colour * weight
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
