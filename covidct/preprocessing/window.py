"""The CT window: HU to grey uint8, exactly as the COVIDx-CT PNGs were made."""

from __future__ import annotations

import numpy as np

from covidct.config import WINDOW_CENTRE_HU, WINDOW_WIDTH_HU


def window_to_uint8(
    hu: np.ndarray, centre: float = WINDOW_CENTRE_HU, width: float = WINDOW_WIDTH_HU
) -> np.ndarray:
    """Apply a CT window to HU values: the COVIDx-CT recipe, truncating to uint8.

    ``uint8(255 * clip((HU - (centre - width / 2)) / width, 0, 1))``; truncation (not
    rounding) reproduces the dataset's PNGs exactly.

    Args:
        hu: Hounsfield units, any shape.
        centre: window centre in HU.
        width: window width in HU.

    Returns:
        uint8 grey levels of the same shape.
    """
    scaled = (hu.astype(np.float32) - np.float32(centre - width / 2)) / np.float32(width)
    return (np.float32(255.0) * np.clip(scaled, 0.0, 1.0)).astype(np.uint8)


def hu_to_grey_level(hu: float) -> int:
    """The uint8 grey level the COVIDx-CT window gives to one HU value.

    Args:
        hu: one value in Hounsfield units.

    Returns:
        Its grey level, 0..255.
    """
    return int(window_to_uint8(np.array([hu], dtype=np.float32))[0])
