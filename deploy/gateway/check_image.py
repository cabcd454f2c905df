"""Run at image build: the gateway's packages import and preprocess the real CT slices packaged
with covidct (ISA-L inflates them, the compiled kernels unfilter them and find the body box),
and nothing of training or export is here (nor SciPy: the body box never needed it)."""

import importlib.util
import sys

import dicomnode.pipeline  # noqa: F401  (the DICOM node: SCP, STOW-RS, viewer, SR, outbox)
import gateway.app  # noqa: F401  (every route, settings, the Triton client)
from covidct.config import DEFAULT_IMAGE_SIZE
from covidct.preprocessing import NATIVE, preprocess_bytes
from covidct.samples import reference_slices

if not NATIVE:
    sys.exit("covidct._native did not build: the gateway would fall back to the slower references")

slices = reference_slices()
for path in slices:
    out = preprocess_bytes(path.read_bytes(), DEFAULT_IMAGE_SIZE)
    size = DEFAULT_IMAGE_SIZE
    assert out.image.shape == (size, size, 1), (path.name, out.image.shape)
absent = [
    m
    for m in ("tensorflow", "keras", "onnxruntime", "scipy", "training", "export")
    if importlib.util.find_spec(m)
]
if absent:
    sys.exit(f"the gateway image must not carry {', '.join(absent)}")
print(f"gateway image check: {len(slices)} real slices preprocessed")
