"""Rewrite tests/export/golden/*.pbtxt from the config generator, after an intended change.

Review the diff before committing: the golden files are what the tests hold the generator to.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.tritonconfig import TARGETS, TritonOptions, render_config
from tests.export.test_tritonconfig import CAM, GOLDEN, SPEC

for target in TARGETS:
    path = GOLDEN / f"{target}.pbtxt"
    path.write_text(render_config(SPEC, TritonOptions(target=target), CAM))
    print(f"wrote {path}")
