"""``covidct bench engines``: one run's model in five engines, batch by batch, in one run.

TF SavedModel (in process), ONNX Runtime fp32, OpenVINO fp32 and bf16 (AMX where the CPU
has it), ONNX Runtime and OpenVINO static INT8 (QDQ), and OpenVINO fp32 and bf16 once more
with PERFORMANCE_HINT THROUGHPUT (streams) instead of the served LATENCY. Each engine runs in
its own child process (``bench.inprocess``) so its peak resident memory is its own; images/s
and latency are medians over rounds, ratios are to ONNX Runtime fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.inprocess import ENGINES, in_child
from bench.sweep import BenchError, save
from covidct.config import ModelSpec


def prepare_models(
    run: Path, workdir: Path, spec: ModelSpec, calibration: np.ndarray
) -> dict[str, Path]:
    """The run's SavedModel, its ONNX conversion and a static INT8 quantisation of that."""
    from export.onnx import convert
    from export.quantize import quantize
    from training.run import SAVED_MODEL

    saved = run / SAVED_MODEL
    if not (saved / "saved_model.pb").is_file():
        raise BenchError(f"{run} has no SavedModel ({saved}); train it first")
    fp32, int8 = workdir / "model.onnx", workdir / "model.int8.onnx"
    convert(saved, fp32, spec)
    quantize(fp32, int8, spec, calibration)
    return {
        "tf-savedmodel": saved,
        "ort-fp32": fp32,
        "openvino-fp32": fp32,
        "openvino-bf16": fp32,
        "ort-int8": int8,
        "openvino-int8": int8,
        "openvino-fp32-throughput": fp32,
        "openvino-bf16-throughput": fp32,
    }


@dataclass(frozen=True)
class Slices:
    """The real slices of one engines run: INT8 calibration, and those judged and timed."""

    calibration: np.ndarray
    held_out: np.ndarray
    note: str  # how they were chosen, for the section


def choose_slices(spec: ModelSpec, calibration_data: Path | None) -> Slices:
    """Calibration on ``calibration_data``'s val slices and every real slice held out, or,
    without it, calibration on half the real slices and agreement judged on the other half."""
    from bench.corpus import real_data_dir, real_pngs
    from export.onnx import slice_images

    real = slice_images(real_pngs(real_data_dir()), spec)
    if calibration_data is not None:
        from export.pipeline import _calibration_images

        calibration = _calibration_images(calibration_data, spec)
        note = f"INT8 calibrated on {len(calibration)} val slices of {calibration_data}"
        return Slices(calibration, real, note)
    calibration, held_out = real[1::2], real[0::2]
    note = (
        f"INT8 calibrated on {len(calibration)} real slices, agreement judged on the other "
        f"{len(held_out)}"
    )
    return Slices(calibration, held_out, note)


def measure_engines(
    run: Path, spec: ModelSpec, slices: Slices, batches: Sequence[int], rounds: int
) -> dict[str, dict[str, Any]]:
    """Every engine's figures, one fresh child process each, on the held-out slices."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = prepare_models(run, Path(tmp), spec, slices.calibration)
        for engine in ENGINES:
            results[engine] = in_child(
                engine, models[engine], spec, slices.held_out, batches, rounds
            )
    return results


def run_engines_bench(
    run: Path,
    out: Path,
    batches: Sequence[int] = (1, 4, 8, 16),
    rounds: int = 10,
    calibration_data: Path | None = None,
) -> str:
    """The whole ``covidct bench engines`` command; returns its Markdown section."""
    from training.run import load_spec

    spec = load_spec(run)
    slices = choose_slices(spec, calibration_data)
    results = measure_engines(run, spec, slices, batches, rounds)
    base = results["ort-fp32"]
    agreement = {e: float(np.mean(np.equal(r["top1"], base["top1"]))) for e, r in results.items()}
    best = {e: max(c["images_per_s"] for c in r["batches"].values()) for e, r in results.items()}
    hint = {
        p: {
            str(b): results[f"openvino-{p}-throughput"]["batches"][str(b)]["images_per_s"]
            / results[f"openvino-{p}"]["batches"][str(b)]["images_per_s"]
            for b in batches
        }
        for p in ("fp32", "bf16")
    }
    section = engines_markdown(spec, slices.note, results, agreement, best, hint, batches, rounds)
    for r in results.values():
        r.pop("top1")
    save(
        out,
        "engines",
        section,
        {
            "run": str(run),
            "spec": spec.to_dict(),
            "results": results,
            "agreement": agreement,
            "best_images_per_s": best,
            "throughput_vs_latency_hint": hint,
        },
    )
    return section


def engines_markdown(
    spec: ModelSpec,
    calib_note: str,
    results: dict[str, dict[str, Any]],
    agreement: dict[str, float],
    best: dict[str, float],
    hint: dict[str, dict[str, float]],
    batches: Sequence[int],
    rounds: int,
) -> str:
    """The BENCHMARKS.md section: one row per engine and batch, then the best batch per
    engine, INT8 / fp32, and THROUGHPUT / LATENCY per precision and batch."""
    base = results["ort-fp32"]
    lines = [
        f"## covidct bench engines ({spec.backbone}, S={spec.image_size})",
        "",
        f"One process per engine (peak RSS is the engine's own, model load included); "
        f"median of {rounds} timed calls per batch after a warm-up call; {calib_note}; "
        "top-1 agreement with ONNX Runtime fp32 on the held-out real slices.",
        "",
        "| engine | batch | images/s | latency ms | vs ORT fp32 | peak RSS MiB | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, r in results.items():
        for b in batches:
            cell, ref = r["batches"][str(b)], base["batches"][str(b)]
            lines.append(
                f"| {engine} | {b} | {cell['images_per_s']:.1f} | {cell['latency_ms']:.1f} | "
                f"{cell['images_per_s'] / ref['images_per_s']:.2f}x | {r['peak_rss_mib']:.0f} | "
                f"{100 * agreement[engine]:.1f}% |"
            )
    lines += [
        "",
        "Best batch per engine: "
        + ", ".join(f"{e} {v:.1f} img/s" for e, v in best.items())
        + f"; INT8 / fp32 (ONNX Runtime, best batch): {best['ort-int8'] / best['ort-fp32']:.2f}x.",
        "",
        "OpenVINO PERFORMANCE_HINT THROUGHPUT (the batch split over the plugin's streams) / "
        "LATENCY (one request on all threads; the openvino target serves bf16 batches of 4 or "
        "more on the streams, everything else on LATENCY), by batch: "
        + "; ".join(
            f"{p} " + ", ".join(f"b{b} {r:.2f}x" for b, r in ratios.items())
            for p, ratios in hint.items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)
