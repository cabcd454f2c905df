"""Where a gateway worker's CPU time goes: py-spy samples, bucketed by what the code does.

``covidct bench capacity --profile`` samples its first gateway row; :func:`profile_summary`
turns the raw stacks into a share of busy samples per bucket.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Where a gateway worker's time goes: each sampled stack counts for the bucket of its
#: innermost frame that matches one.
PROFILE_BUCKETS = (
    (
        "PNG/DICOM decode",
        ("decode (", "decode_raster", "decode_dicom", "_raster_to_grey", "_dicom_to_grey"),
    ),
    ("body box", ("auto_body_box", "_open_square")),
    ("crop + resize", ("crop_and_resize",)),
    ("gRPC to Triton", ("grpc", "tritonclient")),
    (
        "HTTP, multipart, JSON (FastAPI/uvicorn)",
        ("starlette", "fastapi", "uvicorn", "multipart", "h11", "httptools", "json", "pydantic"),
    ),
)


def profile_summary(raw: Path) -> dict[str, float]:
    """Share of busy samples per bucket, from a py-spy ``--format raw`` file."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if (
            frames[-1].startswith(("select ", "epoll", "wait ", "_worker "))
            or "Condition.wait" in frames[-1]
        ):
            continue  # idle: a thread waiting for work is not spending CPU
        total += int(n)
        bucket = "other (event loop, threads, numpy glue)"
        for frame in reversed(frames):
            found = [name for name, needles in PROFILE_BUCKETS if any(k in frame for k in needles)]
            if found:
                bucket = found[0]
                break
        counts[bucket] = counts.get(bucket, 0) + int(n)
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` (all threads, 200 Hz) into a raw file for :func:`profile_summary`,
    or None where py-spy is not installed in the virtual environment."""
    exe = Path(sys.prefix) / "bin" / "py-spy"
    if not exe.is_file():
        return None
    cmd = [
        str(exe),
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, int(seconds))),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        str(out),
        "--nonblocking",
        "--threads",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
