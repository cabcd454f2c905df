"""The switch between the compiled kernels and their Python references reaches every caller."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.corpus import real_pngs
from covidct import preprocessing as pp
from covidct.preprocessing import kernels


class _Refuses:
    """Stands in for ``covidct._native``: any call names the kernel that was reached."""

    def unfilter_grey8(self, *args: object) -> None:
        raise AssertionError("unfilter_grey8 was called")

    def largest_open_component(self, *args: object) -> None:
        raise AssertionError("largest_open_component was called")


def test_callers_read_the_kernels_at_each_call(
    real_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both kernels are looked up when called, so python_references() bypasses each of them
    and puts back what was there."""
    data = real_pngs(real_data)[0].read_bytes()
    grey = np.asarray(Image.open(io.BytesIO(data)))
    stand_in = _Refuses()
    monkeypatch.setattr(kernels, "compiled", stand_in)
    with pytest.raises(AssertionError, match="unfilter_grey8"):
        pp.decode(data)
    with pytest.raises(AssertionError, match="largest_open_component"):
        pp.auto_body_box(grey)
    with pp.python_references():
        assert kernels.compiled is None
        out = pp.preprocess_bytes(data, 64)
    assert kernels.compiled is stand_in
    assert out.image.shape == (64, 64, 1)
