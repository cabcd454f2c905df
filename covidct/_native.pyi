"""Types of the compiled kernels (covidct/_native.c); their Python references are
covidct/preprocessing/png.py (_unfilter_with_pillow) and bodybox.py (open_component_box)."""

import numpy as np

def unfilter_grey8(filtered: bytes, out: np.ndarray, width: int, height: int) -> None: ...
def largest_open_component(
    grey: np.ndarray, width: int, height: int, level: int, radius: int
) -> tuple[int, int, int, int] | None: ...
