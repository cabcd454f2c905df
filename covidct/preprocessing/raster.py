"""PNG and JPEG through Pillow (8/16-bit grey, RGB, RGBA, palette...) to grey uint8.

An 8-bit grey PNG takes the fast path first (:mod:`covidct.preprocessing.png`); PNG and JPEG
are taken as already windowed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct.preprocessing.errors import (
    CorruptImageError,
    InputTooLargeError,
    Limits,
    MultiFrameError,
    PreprocessingError,
    check_shape,
)
from covidct.preprocessing.formats import PNG_MAGIC
from covidct.preprocessing.png import decode_grey8_png


def decode_raster(data: bytes, limits: Limits) -> np.ndarray:
    """Decode PNG or JPEG bytes to grey uint8 ``[H, W]``.

    Args:
        data: PNG or JPEG bytes.
        limits: input bounds, checked on the header before any pixel is decoded.

    Returns:
        The grey slice.

    Raises:
        PreprocessingError: too large, too small, several frames, or corrupt.
    """
    if data.startswith(PNG_MAGIC) and (grey := decode_grey8_png(data, limits)) is not None:
        return grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_shape(img.height, img.width, limits)  # header only: nothing decoded yet
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1:  # APNG, multi-page: which frame would be the slice?
                raise MultiFrameError(f"the image has {frames} frames; send one slice per file")
            img.load()
    except PreprocessingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(
            "decompression bomb guard: the image declares too many pixels"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError("cannot decode image: the data is corrupt or truncated") from e
    return _raster_to_grey(img)


def _raster_to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale the full range linearly onto 0..255 (v * 255 / 65535).
        wide = np.asarray(img, dtype=np.int64)
        return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels carry nothing: composite over black (the air of a CT slice).
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, rgba)
    # RGB, palette, CMYK, 1-bit, YCbCr...: ITU-R 601 luma, as Pillow's "L" conversion.
    return np.asarray(img.convert("L"), dtype=np.uint8)
