"""The one preprocessing: bytes -> grey uint8 -> body crop -> resize -> uint8 ``[S, S, 1]``.

Training (through the prepared cache), ``covidct preprocess`` and the gateway all call
:func:`preprocess_bytes`; nothing else may decode, window, crop or resize a slice, so the
served model sees exactly what the trained model saw. NumPy, Pillow, pydicom and ISA-L only:
this package must never import TensorFlow (a test enforces it).

Steps:
    1. decode by magic bytes (PNG, JPEG, DICOM), never by file name or declared type
       (:mod:`.formats`);
    2. grey uint8: DICOM gets HU = raw x RescaleSlope + RescaleIntercept and the COVIDx-CT
       lung window (centre -600, width 1500) with truncation, exactly as the dataset's PNGs
       were made (:mod:`.dicom`, :mod:`.window`); PNG/JPEG are taken as already windowed
       (:mod:`.png`, the fast path for 8-bit grey PNGs, and :mod:`.raster`, Pillow);
    3. crop to the body box: the label box in training, :func:`auto_body_box` at serving
       (:mod:`.bodybox`);
    4. resize the crop (stretching it) to S x S with one fixed interpolation (:mod:`.pipeline`).

The two hot loops run compiled (``covidct/_native.c``) when built, else their Python references
(:mod:`.kernels`: :data:`NATIVE`, :func:`python_references`). Errors and input bounds are in
:mod:`.errors`. Every name below is importable from ``covidct.preprocessing`` itself.
"""

from covidct.preprocessing.bodybox import (
    BODY_MARGIN,
    BODY_OPENING,
    BODY_THRESHOLD_HU,
    Box,
    auto_body_box,
    largest_component_box,
    open_component_box,
)
from covidct.preprocessing.errors import (
    DEFAULT_LIMITS,
    ColourImageError,
    CorruptImageError,
    EmptyInputError,
    ImageTooSmallError,
    InputTooLargeError,
    InvalidBoxError,
    Limits,
    MultiFrameError,
    NoPixelDataError,
    NotCTError,
    PreprocessingError,
    UnsupportedFormatError,
    UnusableSliceError,
)
from covidct.preprocessing.formats import (
    DICOM_MAGIC,
    DICOM_MAGIC_OFFSET,
    DICOM_STREAM_STARTS,
    JPEG_MAGIC,
    PNG_MAGIC,
    Source,
    sniff,
)
from covidct.preprocessing.kernels import NATIVE, python_references
from covidct.preprocessing.pipeline import (
    RESAMPLE,
    DecodedSlice,
    Preprocessed,
    crop_and_resize,
    decode,
    preprocess_bytes,
    validate_box,
)
from covidct.preprocessing.png import grey8_png_pixels
from covidct.preprocessing.window import hu_to_grey_level, window_to_uint8

__all__ = [
    "BODY_MARGIN",
    "BODY_OPENING",
    "BODY_THRESHOLD_HU",
    "DEFAULT_LIMITS",
    "DICOM_MAGIC",
    "DICOM_MAGIC_OFFSET",
    "DICOM_STREAM_STARTS",
    "JPEG_MAGIC",
    "NATIVE",
    "PNG_MAGIC",
    "RESAMPLE",
    "Box",
    "ColourImageError",
    "CorruptImageError",
    "DecodedSlice",
    "EmptyInputError",
    "ImageTooSmallError",
    "InputTooLargeError",
    "InvalidBoxError",
    "Limits",
    "MultiFrameError",
    "NoPixelDataError",
    "NotCTError",
    "Preprocessed",
    "PreprocessingError",
    "Source",
    "UnsupportedFormatError",
    "UnusableSliceError",
    "auto_body_box",
    "crop_and_resize",
    "decode",
    "grey8_png_pixels",
    "hu_to_grey_level",
    "largest_component_box",
    "open_component_box",
    "preprocess_bytes",
    "python_references",
    "sniff",
    "validate_box",
    "window_to_uint8",
]
