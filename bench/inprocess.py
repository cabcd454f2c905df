"""Engines run in process (outside Triton), each in a child process of its own.

A runner maps a uint8 batch to probabilities for one engine: TF SavedModel, ONNX Runtime
fp32 or INT8, OpenVINO fp32, bf16 or INT8 (LATENCY, as the openvino target serves, or
PERFORMANCE_HINT THROUGHPUT). :func:`in_child` measures one engine once in a fresh process
(``bench engines``: its peak resident memory is the engine's own); :class:`EngineChild` keeps
one loaded and measures on request (``bench triton``'s in-process reference).

Run as ``python -m bench.inprocess ENGINE MODEL SPEC IMAGES BATCHES ROUNDS`` it is
:func:`in_child`'s child; with ``--serve ENGINE MODEL SPEC IMAGES`` it is :class:`EngineChild`'s.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.sweep import BenchError
from covidct.config import ModelSpec

ENGINES = (
    "tf-savedmodel",
    "ort-fp32",
    "openvino-fp32",
    "openvino-bf16",
    "ort-int8",
    "openvino-int8",
    "openvino-fp32-throughput",
    "openvino-bf16-throughput",
)


def _runner(engine: str, model: Path, spec: ModelSpec) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a uint8 batch to probabilities, for one engine."""
    if engine == "tf-savedmodel":
        from training.run import SavedModelRunner

        tf_runner = SavedModelRunner(model, spec)
        return lambda x: tf_runner(x, batch_size=len(x))[spec.probabilities_name]
    if engine in ("ort-fp32", "ort-int8"):
        from export.onnx import onnx_session

        session: Any = onnx_session(model)
        return lambda x: session.run([spec.probabilities_name], {spec.input_name: x})[0]
    if engine.endswith("-throughput"):
        return _throughput_runner(model, engine.split("-")[1], spec)
    if engine.startswith("openvino-"):
        from export.openvino import Engine

        # As the openvino target compiles it: fp32 pinned to f32 (OpenVINO's CPU plugin would
        # silently run bf16 on CPUs with AMX/AVX512-BF16), bf16 asked for (fp32 where the CPU
        # has no bf16), int8 the QDQ model with the rest in f32. "openvino-bf16-streams4":
        # as a served version whose engine.json splits batches of 4 or more over the streams.
        precision, _, split = engine.removeprefix("openvino-").partition("-streams")
        runner = Engine(model, precision, int(split or 0))
        return lambda x: runner(x, spec.input_name, [spec.probabilities_name])[0]
    raise BenchError(f"engine {engine!r} must be one of {', '.join(ENGINES)}")


def _throughput_runner(
    model: Path, precision: str, spec: ModelSpec
) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO with PERFORMANCE_HINT THROUGHPUT: the batch split over the plugin's optimal
    number of requests, run at once on its streams (the other way to use the cores; the
    openvino target runs LATENCY: one request, all the instance's threads)."""
    from openvino import AsyncInferQueue

    from export.openvino import compile_model

    compiled = compile_model(model, precision, hint="THROUGHPUT")
    jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = AsyncInferQueue(compiled, jobs)
    parts: dict[int, np.ndarray] = {}

    def done(request: Any, index: int) -> None:
        parts[index] = np.array(request.get_tensor(spec.probabilities_name).data)

    queue.set_callback(done)

    def run(x: np.ndarray) -> np.ndarray:
        parts.clear()
        chunks = np.array_split(x, min(jobs, len(x)))
        for i, chunk in enumerate(chunks):
            queue.start_async({spec.input_name: chunk}, i)
        queue.wait_all()
        return np.concatenate([parts[i] for i in range(len(chunks))])

    return run


def peak_rss_mib() -> float:
    """This process's peak resident memory since its exec (VmHWM).

    Not ``ru_maxrss``: Linux carries that across exec, so a child would report its parent's
    peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    engine: str,
    model: Path,
    spec: ModelSpec,
    images: np.ndarray,
    batches: Sequence[int],
    rounds: int,
) -> dict[str, Any]:
    """This process's figures for one engine (call it in a fresh process)."""
    start = time.perf_counter()
    run = _runner(engine, model, spec)
    load_s = time.perf_counter() - start
    probabilities = np.concatenate([run(images[i : i + 8]) for i in range(0, len(images), 8)])
    figures: dict[str, Any] = {"engine": engine, "load_seconds": round(load_s, 1)}
    figures["batches"] = timed(run, images, batches, rounds)
    figures["peak_rss_mib"] = peak_rss_mib()
    figures["top1"] = probabilities.argmax(1).tolist()
    return figures


def timed(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batches: Sequence[int],
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Per batch size: images/s and latency, medians over ``rounds`` runs after a warm-up."""
    figures = {}
    for b in batches:
        x = np.stack([images[i % len(images)] for i in range(b)])
        run(x)  # warm this shape
        latencies = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            run(x)
            latencies.append(time.perf_counter() - t0)
        med = statistics.median(latencies)
        figures[str(b)] = {"images_per_s": b / med, "latency_ms": 1000 * med}
    return figures


def _child(engine: str, model: Path, spec: Path, images: Path, batches: str, rounds: int) -> None:
    figures = measure(
        engine,
        model,
        ModelSpec.load(spec),
        np.load(images),
        [int(b) for b in batches.split(",")],
        rounds,
    )
    print(json.dumps(figures))


def in_child(
    engine: str,
    model: Path,
    spec: ModelSpec,
    images: np.ndarray,
    batches: Sequence[int],
    rounds: int,
) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (its own memory, threads and peak RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, images_path = Path(tmp) / "spec.json", Path(tmp) / "images.npy"
        spec.save(spec_path)
        np.save(images_path, images)
        cmd = [
            sys.executable,
            "-m",
            "bench.inprocess",
            engine,
            str(model),
            str(spec_path),
            str(images_path),
            ",".join(map(str, batches)),
            str(rounds),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise BenchError(f"engine {engine} failed:\n{tail}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


#: The prefix of the persistent child's answers on its stdout (libraries may print there too).
_REPLY = "@bench.inprocess "


class EngineChild:
    """One engine kept loaded in a child process and measured on demand.

    ``bench triton`` measures each served version's engine in process after every level of
    its sweep: this machine's speed moves by tens of percent within minutes, so the in-process
    reference is the median of passes spread over the same time as the served figures, not
    one pass before and one after. The child loads once (OpenVINO compiles once) and answers
    each ``measure`` with :func:`timed`'s figures.
    """

    def __init__(self, engine: str, model: Path, spec: ModelSpec, images: np.ndarray) -> None:
        self.engine = engine
        self._tmp = tempfile.TemporaryDirectory()
        tmp = Path(self._tmp.name)
        spec.save(tmp / "spec.json")
        np.save(tmp / "images.npy", images)
        self._stderr = (tmp / "stderr.txt").open("wb")
        cmd = [sys.executable, "-m", "bench.inprocess", "--serve", engine, str(model)]
        self.process = subprocess.Popen(
            [*cmd, str(tmp / "spec.json"), str(tmp / "images.npy")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        try:
            self._reply()  # loaded
        except BenchError:
            self.close()
            raise

    def measure(self, batches: Sequence[int], rounds: int) -> dict[str, dict[str, float]]:
        """:func:`timed` in the child, now."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(f"{','.join(map(str, batches))} {rounds}\n")
            self.process.stdin.flush()
        except OSError:
            pass  # the child is gone: _reply says why
        return dict(self._reply()["batches"])

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return dict(json.loads(line.removeprefix(_REPLY)))
        self.process.wait()
        self._stderr.flush()
        lines = (Path(self._tmp.name) / "stderr.txt").read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-6:])
        raise BenchError(f"engine {self.engine} failed ({self.process.returncode}):\n{tail}")

    def close(self) -> None:
        """End the child (its stdin closed, killed after a minute) and remove its files."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()
        self._tmp.cleanup()

    def __enter__(self) -> EngineChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(engine: str, model: Path, spec_path: Path, images_path: Path) -> None:
    """The persistent child of :class:`EngineChild`: load, then measure per stdin line."""
    spec, images = ModelSpec.load(spec_path), np.load(images_path)
    start = time.perf_counter()
    run = _runner(engine, model, spec)
    print(_REPLY + json.dumps({"load_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    for line in sys.stdin:
        batches, rounds = line.split()
        figures = timed(run, images, [int(b) for b in batches.split(",")], int(rounds))
        print(_REPLY + json.dumps({"batches": figures}), flush=True)


if __name__ == "__main__" and sys.argv[1] == "--serve":
    _serve(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
elif __name__ == "__main__":
    _child(
        sys.argv[1],
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        Path(sys.argv[4]),
        sys.argv[5],
        int(sys.argv[6]),
    )
