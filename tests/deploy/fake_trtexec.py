"""A stand-in for TensorRT's ``trtexec`` on machines without a GPU, for the tests of
deploy/trt-build/build_engines.py. The "engine" it saves is the ONNX file itself, and running
it runs ONNX Runtime on the ``--loadInputs`` file, so the build script's shapes, input bytes
and output parsing are checked for real; only TensorRT is missing.

Env: FAKE_TRT_CALLS (append each invocation's mode), FAKE_TRT_FAIL=build|run (fail there,
leaving a partial file), FAKE_TRT_SKEW (added to every probability), FAKE_TRT_VERSION.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


def install(bin_dir: Path) -> Path:
    """``trtexec`` (this stand-in) and ``nvidia-smi`` (prints $FAKE_GPU, default Tesla T4)
    in ``bin_dir``, for a PATH that puts it first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "trtexec").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" "$@"\n')
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "${FAKE_GPU:-Tesla T4}"\n')
    for tool in ("trtexec", "nvidia-smi"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def main(argv: list[str]) -> int:
    if argv == ["--help"]:
        version = os.environ.get("FAKE_TRT_VERSION", "100500")
        print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{version}]")
        return 0
    args = dict(a.removeprefix("--").split("=", 1) for a in argv if "=" in a)
    mode = "build" if "saveEngine" in args else "run"
    if calls := os.environ.get("FAKE_TRT_CALLS"):
        with open(calls, "a") as f:
            f.write(mode + "\n")
    if mode == "build":
        engine = Path(args["saveEngine"])
        if os.environ.get("FAKE_TRT_FAIL") == "build":
            engine.write_bytes(b"half an engine")
            print("[E] Error[2]: out of memory (simulated)")
            return 1
        shutil.copy(args["onnx"], engine)
        return 0
    if os.environ.get("FAKE_TRT_FAIL") == "run":
        print("[E] Error[1]: engine deserialisation failed (simulated)")
        return 1
    import numpy as np
    import onnxruntime as ort

    name, dims = args["shapes"].split(":")
    shape = [int(n) for n in dims.split("x")]
    path = args["loadInputs"].split(":", 1)[1]
    images = np.fromfile(path, dtype=np.uint8).reshape(shape)
    session = ort.InferenceSession(args["loadEngine"], providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: images})
    skew = float(os.environ.get("FAKE_TRT_SKEW", "0"))
    exported = [
        {
            "name": meta.name,
            "dimensions": "x".join(map(str, out.shape)),
            "values": (out.astype(np.float64) + skew).ravel().tolist(),
        }
        for meta, out in zip(session.get_outputs(), outputs, strict=True)
    ]
    Path(args["exportOutput"]).write_text(json.dumps(exported))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
