"""Build the TensorRT engines of a Triton model repository on the GPU that will serve them.

    python3 build_engines.py REPOSITORY [--force]

Run by the one-shot ``trt-build`` service of docker-compose.yml (NGC TensorRT container,
repository mounted read-write) before Triton starts; by hand before loading a new
``tensorrt-plan`` version on a running stack::

    docker compose --profile gpu run --rm trt-build

For every version whose manifest says ``"target": "tensorrt-plan"`` (written by ``covidct
export``): ``trtexec`` builds ``model.plan`` from ``model.onnx`` (precision and min/opt/max
shapes from the manifest), runs it on the packaged real CT slices and compares its
probabilities with ONNX Runtime's, recorded at export. Only an engine within the tolerance
is published, by a rename, with ``model.plan.json`` naming what it was built for: the GPU
model, the TensorRT version and the ONNX file's SHA-256. A version whose engine matches all
three is skipped; any change rebuilds it. A failure leaves no ``model.plan`` behind (an older
good one stays) and exits non-zero, so Triton does not start on a missing engine.

Standard library only: the TensorRT container has Python but not our packages.
Exit status: 0 built or up to date, 1 a build or parity check failed, 2 not a GPU host or
the repository is unusable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TRTEXEC_DIRS = ("/usr/src/tensorrt/bin", "/opt/tensorrt/bin")
PLAN, KEY = "model.plan", "model.plan.json"


class BuildError(Exception):
    """One version's engine could not be built or failed its check (exit 1)."""


class HostError(Exception):
    """Nothing can be built here: no trtexec, no GPU, an unreadable repository (exit 2)."""


def say(message: str) -> None:
    print(f"[trt-build] {message}", flush=True)


def find_trtexec() -> str:
    found = shutil.which("trtexec") or next(
        (str(Path(d) / "trtexec") for d in TRTEXEC_DIRS if (Path(d) / "trtexec").is_file()), None
    )
    if found is None:
        raise HostError(
            "trtexec not found (PATH, " + ", ".join(TRTEXEC_DIRS) + "): run this in the NGC "
            "TensorRT container on the serving GPU (docker compose --profile gpu run trt-build)"
        )
    return found


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"no GPU visible: nvidia-smi failed ({e})") from e
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not names:
        raise HostError(f"no GPU visible: nvidia-smi said {out.stderr.strip() or out.stdout!r}")
    return names[0]


def tensorrt_version(trtexec: str) -> str:
    out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=120)
    found = re.search(r"TensorRT v(\d+)", out.stdout + out.stderr)
    if found is None:
        raise HostError(f"{trtexec} --help names no TensorRT version: {out.stderr[-300:]!r}")
    return found.group(1)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shape_arg(name: str, shape: list[int]) -> str:
    return f"{name}:" + "x".join(str(int(n)) for n in shape)


def run(cmd: list[str], log: Path, what: str) -> None:
    with log.open("ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise BuildError(f"{what} failed (trtexec exit {code}): " + " | ".join(tail))


def compare(outputs: Path, parity: dict[str, Any], version: Path) -> dict[str, float]:
    """The engine's probabilities against ONNX Runtime's: max |difference|, top-1 agreement."""
    expected = json.loads((version / parity["expected"]).read_text())[parity["output"]]
    try:
        exported = json.loads(outputs.read_text())
        (got,) = [o for o in exported if o.get("name") == parity["output"]]
        values = [float(v) for v in got["values"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BuildError(f"trtexec wrote no usable {parity['output']!r} output: {e}") from e
    n, k = len(expected), len(expected[0])
    if len(values) != n * k:
        raise BuildError(f"engine gave {len(values)} probabilities for {n} slices x {k} classes")
    rows = [values[i * k : (i + 1) * k] for i in range(n)]
    pairs = list(zip(rows, expected, strict=True))
    diff = max(abs(a - b) for row, ref in pairs for a, b in zip(row, ref, strict=True))
    agree = sum(row.index(max(row)) == ref.index(max(ref)) for row, ref in pairs)
    figures = {"max_abs_diff": diff, "top1_agreement": agree / n, "slices": n}
    if diff > parity["max_abs_diff"]:
        raise BuildError(
            f"engine differs from ONNX Runtime by {diff:.4g} on the real slices "
            f"(> {parity['max_abs_diff']}); top-1 agreement {agree}/{n}: not published"
        )
    return figures


def build_version(version: Path, trtexec: str, facts: dict[str, str], force: bool) -> str:
    """Build, check and publish one version's engine; returns what was done."""
    manifest = json.loads((version / "manifest.json").read_text())
    trt = manifest.get("tensorrt")
    if trt is None:
        raise BuildError(f"{version}: manifest has no 'tensorrt' section; export it again")
    onnx = version / "model.onnx"
    key = {**facts, "onnx_sha256": sha256(onnx), "precision": trt["precision"]}
    key["max_shape"] = trt["max_shape"]
    plan = version / PLAN
    if not force and plan.is_file() and (version / KEY).is_file():
        try:
            if json.loads((version / KEY).read_text()).get("key") == key:
                return "up to date"
        except ValueError:
            pass
    work = Path(tempfile.mkdtemp(prefix=".trt-build-", dir=version))
    try:
        engine, outputs, log = work / PLAN, work / "outputs.json", version / "trtexec.log"
        log.write_bytes(b"")
        name = trt["input"]
        build = [
            trtexec,
            f"--onnx={onnx}",
            f"--saveEngine={engine}",
            "--minShapes=" + shape_arg(name, trt["min_shape"]),
            "--optShapes=" + shape_arg(name, trt["opt_shape"]),
            "--maxShapes=" + shape_arg(name, trt["max_shape"]),
            f"--memPoolSize=workspace:{int(trt['workspace_mb'])}M",
            "--skipInference",
        ]
        if trt["precision"] == "fp16":
            build.append("--fp16")
        run(build, log, "engine build")
        parity = trt["parity"]
        check = [
            trtexec,
            f"--loadEngine={engine}",
            "--shapes=" + shape_arg(name, parity["shape"]),
            f"--loadInputs={name}:{version / parity['input']}",
            f"--exportOutput={outputs}",
            "--iterations=1",
            "--warmUp=0",
            "--duration=0",
        ]
        run(check, log, "parity run on the real slices")
        figures = compare(outputs, parity, version)
        record = work / KEY
        record.write_text(json.dumps({"key": key, "parity": figures}, indent=2) + "\n")
        engine.chmod(0o644)
        record.chmod(0o644)
        os.replace(engine, plan)  # Triton never sees a partial engine
        os.replace(record, version / KEY)
        return f"built ({figures['max_abs_diff']:.2g} max difference, {figures['slices']} slices)"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plan_versions(repository: Path) -> list[Path]:
    found = []
    for manifest in sorted(repository.glob("*/[0-9]*/manifest.json")):
        try:
            target = json.loads(manifest.read_text()).get("target")
        except (OSError, ValueError) as e:
            raise HostError(f"{manifest}: unreadable manifest ({e})") from e
        if target == "tensorrt-plan":
            found.append(manifest.parent)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        if not args.repository.is_dir():
            raise HostError(f"model repository {args.repository} does not exist")
        versions = plan_versions(args.repository)
        if not versions:
            say(f"no tensorrt-plan versions in {args.repository}: nothing to build")
            return 0
        trtexec = find_trtexec()
        facts = {"gpu": gpu_name(), "tensorrt": tensorrt_version(trtexec)}
        say(
            f"{len(versions)} tensorrt-plan version(s); GPU {facts['gpu']}, "
            f"TensorRT {facts['tensorrt']}"
        )
    except HostError as e:
        say(f"error: {e}")
        return 2
    failed = 0
    for version in versions:
        name = f"{version.parent.name}/{version.name}"
        say(f"{name}: checking ...")
        try:
            say(f"{name}: {build_version(version, trtexec, facts, args.force)}")
        except (BuildError, OSError, KeyError, ValueError) as e:
            failed += 1
            say(f"{name}: error: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
