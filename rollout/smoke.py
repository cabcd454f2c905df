"""Smoke test of a loaded version: real CT slices through Triton, checked before any switch.

Passes when, on every Triton replica, every slice decodes, every answer is a finite
probability vector summing to 1, the top-1 class agrees with the version's own ONNX file run
in this process (so Triton serves what was exported), and the latency is sane.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import ModelSpec
from rollout.control import DeployError, TritonControl


class SmokeError(DeployError):
    """The new version failed its smoke test."""


def smoke_slices(folder: Path | None, limit: int = 16) -> list[Path]:
    """Slices to send: every file in ``folder``, else the real CT slices packaged with covidct."""
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if not files:
            raise SmokeError(f"no slices in {folder}")
        return files[:limit]
    from covidct.samples import reference_slices

    return reference_slices()[:limit]


def smoke_test(
    tritons: Sequence[TritonControl],
    version: int,
    version_dir: Path,
    spec: ModelSpec,
    files: list[Path],
    min_agreement: float = 1.0,
    max_latency_ms: float = 5000.0,
) -> dict[str, Any]:
    """Run the checks on every replica; returns the worst figures over them (and each
    replica's), raises SmokeError on the first failed check, naming the replica."""
    from export.onnx import ExportError, onnx_session, run_onnx, slice_images

    try:
        batch = slice_images(files, spec)
    except ExportError as e:
        raise SmokeError(f"smoke slices are unusable: {e}") from e
    reference = run_onnx(onnx_session(version_dir / "model.onnx"), spec, batch)
    expected = reference[spec.probabilities_name].argmax(1)
    each = {}
    for triton in tritons:
        where = f" on {triton.url}" if len(tritons) > 1 else ""
        try:
            each[triton.url] = _smoke_one(triton, version, spec, batch, expected, where)
        except SmokeError:
            raise
        except DeployError as e:
            raise DeployError(f"{e}{where}") from e
    figures = list(each.values())
    agreement = min(f["top1_agreement"] for f in figures)
    if agreement < min_agreement:
        raise SmokeError(
            f"version {version}: top-1 agrees with its ONNX file on {agreement:.0%} of "
            f"{len(batch)} slices (needs {min_agreement:.0%})"
        )
    p99 = max(f["p99_ms"] for f in figures)
    if p99 > max_latency_ms:
        raise SmokeError(f"version {version}: p99 latency {p99:.0f} ms > {max_latency_ms:.0f} ms")
    worst = {
        "slices": len(batch),
        "top1_agreement": agreement,
        "max_sum_error": max(f["max_sum_error"] for f in figures),
        "p50_ms": max(f["p50_ms"] for f in figures),
        "p99_ms": p99,
    }
    return {**worst, "replicas": each} if len(tritons) > 1 else worst


def _smoke_one(
    triton: TritonControl,
    version: int,
    spec: ModelSpec,
    batch: np.ndarray,
    expected: np.ndarray,
    where: str,
) -> dict[str, Any]:
    latencies, served = [], []
    for image in batch:  # one request per slice, as clients send them
        t0 = time.perf_counter()
        try:
            served.append(
                triton.infer(version, image[None], spec.input_name, spec.probabilities_name)
            )
        except DeployError:
            raise
        except Exception as e:
            raise SmokeError(f"version {version} failed to answer{where}: {str(e)[:300]}") from e
        latencies.append((time.perf_counter() - t0) * 1000)
    probs = np.concatenate(served)
    if probs.shape != (len(batch), spec.num_classes) or not np.isfinite(probs).all():
        raise SmokeError(
            f"version {version} answered non-finite or mis-shaped probabilities{where}"
        )
    worst_sum = float(np.abs(probs.sum(axis=1) - 1).max())
    if worst_sum > 1e-3:
        raise SmokeError(f"version {version}{where}: probabilities sum to 1 +- {worst_sum:.3g}")
    return {
        "top1_agreement": float((expected == probs.argmax(1)).mean()),
        "max_sum_error": worst_sum,
        "p50_ms": round(float(np.median(latencies)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }
