"""MODEL_CARD.md: what a run is, what it was trained on, how it scored, and what it is not."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from covidct.config import (
    CLASS_NAMES,
    NOT_A_MEDICAL_DEVICE,
    SYNTHETIC_DATA_NOTE,
    ModelSpec,
    TrainConfig,
)


def write_model_card(
    run: Path, spec: ModelSpec, cfg: TrainConfig, results: dict[str, Any], tables: list[str]
) -> None:
    split_files = (
        json.loads((run / "data_fingerprint.json").read_text())
        if (run / "data_fingerprint.json").is_file()
        else {}
    )
    lines = [
        f"# Model card: {spec.name}",
        "",
        f"**{NOT_A_MEDICAL_DEVICE}**",
        "",
    ]
    if spec.provenance.synthetic:
        lines += [f"**{SYNTHETIC_DATA_NOTE}**", ""]
    lines += [
        "## Intended use",
        "",
        spec.intended_use(),
        "",
        "## Model",
        "",
        f"- Backbone: {spec.backbone} ({'weights ' + cfg.weights})",
        f"- Input: `{spec.input_name}` uint8 `[N, {spec.image_size}, {spec.image_size}, 1]`, "
        "a windowed grey slice (centre "
        f"{spec.window_centre:g} HU, width {spec.window_width:g} HU) cropped to the body and "
        "resized by `covidct.preprocessing`",
        f"- Outputs: `{spec.probabilities_name}` `[N, 3]` ({', '.join(CLASS_NAMES)}), "
        f"`{spec.cam_name}` class activation maps",
        f"- Calibration temperature: {spec.temperature:.4f} "
        f"(val ECE {results['calibration']['ece_before']:.4f} before"
        + (
            f", {results['calibration']['ece_after']:.4f} after)"
            if "ece_after" in results["calibration"]
            else ")"
        ),
        f"- Series verdict: `{spec.series_rule.name}`, {spec.series_rule.describe()} "
        f"({results.get('series_rule', {}).get('chosen_on', 'the default')}); the gateway's "
        "study summary and the DICOM node's report use it",
        "",
        "## Training",
        "",
        f"- Data fingerprint (sha256 of the split label files): "
        f"`{spec.provenance.data_fingerprint}`",
        *(f"  - {k}: `{v}`" for k, v in split_files.items()),
        "- Slices: " + ", ".join(f"{k} {v}" for k, v in results["splits"].items()),
        "- Split: "
        + ("the folder's own" if cfg.auto_split == "none" else f"automatic by {cfg.auto_split}")
        + (
            " (slices of one patient are in several splits: the figures are optimistic)"
            if cfg.auto_split == "slice"
            else ""
        ),
        f"- Epochs: head {cfg.head_epochs if cfg.pretrained else 0}, "
        f"{'fine-tune' if cfg.pretrained else 'from scratch'} {cfg.epochs}; batch "
        f"{cfg.batch_size}; unfreeze {cfg.unfreeze if cfg.pretrained else 'all'}; "
        f"augmentation {'on' if cfg.augment else 'off'}; balance {cfg.balance}; seed {cfg.seed}",
        f"- Training time: {results['train_seconds']:.0f} s",
        "",
        "## Figures",
        "",
        *tables,
        "",
        f"SavedModel vs Keras, max |difference| of probabilities: "
        f"{results['saved_model_max_abs_diff']:.2e}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
    ]
    (run / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
