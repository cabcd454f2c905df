"""End-to-end training on synthetic and real slices (real TensorFlow, CPU).

The CI-sized configuration: DenseNet121 from scratch (``--weights none``) at 64x64, 12
epochs, on 90 synthetic patients x 5 slices. All tests that read its run share one
training (xdist group "ci-run"), so it is trained once.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.config import ModelSpec
from covidct.preprocessing import preprocess_bytes
from tests.cli_helpers import CI_TRAIN, TINY_TRAIN, covidct

pytestmark = pytest.mark.slow


def _real_inputs(fixtures: Path, size: int) -> np.ndarray:
    images = sorted((fixtures / "covidxct-real" / "images").glob("*.png"))
    return np.stack([preprocess_bytes(p.read_bytes(), size).image for p in images])


@pytest.mark.xdist_group("ci-run")
def test_ci_configuration_reaches_90_percent(ci_run: Path) -> None:
    """>= 90% on the synthetic test split (72 slices of 24 unseen patients), for any seed/CPU.

    Measured with scripts/ci_recipe_sweep.py on an Intel Xeon with AMX (2026-11-29), seeds 0-4,
    oneDNN on (default) and off (TF_ENABLE_ONEDNN_OPTS=0, other kernels and rounding, as on
    another CPU): test accuracy 93.1-97.2% (median 95.8%), the worst 2 slices above the
    threshold (65 of 72); the misses are mostly COVID-19 slices read as Normal. The earlier recipe
    (90 patients x 5 slices, batch 16, 12 epochs, intensity augmentation, first best epoch
    kept) gave 90.0-96.7% there and 83.3% on an AMD EPYC.
    """
    metrics = json.loads((ci_run / "metrics.json").read_text())
    assert metrics["splits"]["test"] > 0
    assert metrics["test"]["accuracy"] >= 0.90, metrics["test"]
    assert metrics["synthetic"] is True


@pytest.mark.xdist_group("ci-run")
def test_run_directory_contents(ci_run: Path) -> None:
    for name in (
        "saved_model/saved_model.pb",
        "model_spec.json",
        "train_config.json",
        "checkpoints/best.weights.h5",
        "train_log.csv",
        "metrics.json",
        "confusion_matrix.png",
        "roc.png",
        "MODEL_CARD.md",
        "model.keras",
    ):
        assert (ci_run / name).exists(), name
    assert any((ci_run / "tensorboard").rglob("events.out.tfevents*"))
    log_rows = (ci_run / "train_log.csv").read_text().splitlines()
    epochs = int(CI_TRAIN[CI_TRAIN.index("--epochs") + 1])
    assert log_rows[0].startswith("epoch") and len(log_rows) == epochs + 1
    assert "val_macro_f1" in log_rows[0]
    card = (ci_run / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card and "Trained on synthetic data" in card
    spec = ModelSpec.load(ci_run / "model_spec.json")
    assert spec.image_size == 64 and spec.provenance.synthetic
    assert spec.provenance.data_fingerprint in card
    assert Image.open(ci_run / "confusion_matrix.png").size[0] > 300


@pytest.mark.xdist_group("ci-run")
def test_saved_model_reloads_with_the_same_probabilities_and_cam_identity(
    ci_run: Path, fixtures: Path
) -> None:
    import keras
    import tensorflow as tf

    import training.model  # noqa: F401  (registers the custom layers for load_model)

    spec = ModelSpec.load(ci_run / "model_spec.json")
    x = _real_inputs(fixtures, spec.image_size)
    served = tf.saved_model.load(str(ci_run / "saved_model")).signatures["serving_default"](
        image=tf.constant(x)
    )
    model = keras.models.load_model(ci_run / "model.keras")
    ref = model.predict_on_batch(x)
    probs, cam = served["probabilities"].numpy(), served["cam"].numpy()
    assert np.abs(probs - ref["probabilities"]).max() <= 1e-5
    # CAM identity on the trained, calibrated model: softmax((mean cam + bias) / T).
    bias = keras.ops.convert_to_numpy(model.get_layer("cam_head").bias)
    logits = (cam.mean(axis=(1, 2)) + bias) / spec.temperature
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.abs(probs - expected).max() <= 1e-5


@pytest.mark.xdist_group("ci-run")
def test_evaluate_command_reproduces_the_test_figures(ci_run: Path, cache_env, tmp_path) -> None:
    data = ci_run.parent / "data"
    result = covidct(
        "evaluate",
        "--run",
        ci_run,
        "--data",
        data,
        "--split",
        "test",
        "--out",
        tmp_path,
        env=cache_env,
    )
    assert result.returncode == 0, result.stderr
    assert "| Sensitivity (%) |" in result.stdout and "| PPV (%) |" in result.stdout
    again = json.loads((tmp_path / "metrics.json").read_text())["test"]
    trained = json.loads((ci_run / "metrics.json").read_text())["test"]
    assert again["confusion_matrix"] == trained["confusion_matrix"]
    assert (tmp_path / "roc.png").is_file()


@pytest.mark.xdist_group("resume")
def test_resume_after_a_kill_continues_with_the_next_epoch(
    tmp_path: Path, synth_dir: Path, cache_env
) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        synth_dir,
        "--out",
        run,
        *TINY_TRAIN,
        "--epochs",
        "3",
        "--patience",
        "5",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cache_env,
    )
    log = run / "train_log.csv"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)  # hard kill right after epoch 1 was logged
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert len(log.read_text().splitlines()) == 2
    assert not (run / "saved_model").exists()

    refused = covidct("train", *map(str, args[1:]), env=cache_env)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = covidct(*map(str, args), "--resume", env=cache_env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Epoch 1/3" not in resumed.stdout
    assert resumed.stdout.index("Epoch 2/3") < resumed.stdout.index("Epoch 3/3")
    epochs = [int(r.split(",")[0]) for r in log.read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2]
    assert (run / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.xdist_group("resume")
def test_same_seed_same_model(tmp_path: Path, synth_dir: Path, cache_env, fixtures) -> None:
    import tensorflow as tf

    outputs = []
    for name in ("a", "b"):
        run = tmp_path / name
        result = covidct(
            "train",
            "--data",
            synth_dir,
            "--out",
            run,
            *TINY_TRAIN,
            "--epochs",
            "1",
            "--seed",
            "5",
            env=cache_env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        sig = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
        outputs.append(sig(image=tf.constant(_real_inputs(fixtures, 32)))["probabilities"].numpy())
    assert np.array_equal(outputs[0], outputs[1])


@pytest.mark.xdist_group("real")
def _real_folder(real_data: Path, tmp_path: Path) -> Path:
    """The real slices to train on: all of ../shared/data's, or (with only the fixtures' five)
    those five and the six packaged with covidct, their official lines merged (7 slices)."""
    real = real_data / "covidxct-real"
    if len(list((real / "images").glob("*.png"))) >= 100:
        return real
    from covidct.samples import samples_dir

    merged = tmp_path / "real"
    (merged / "images").mkdir(parents=True)
    lines: dict[str, str] = {}
    for folder, labels in (
        (real / "images", real / "test_COVIDx-CT.txt"),
        (samples_dir(), samples_dir() / "labels.txt"),
    ):
        for line in labels.read_text().splitlines():
            name = line.split()[0]
            lines[name] = line
            shutil.copyfile(folder / name, merged / "images" / name)
    (merged / "test_COVIDx-CT.txt").write_text("\n".join(lines.values()) + "\n")
    return merged


def test_real_slices_end_to_end(real_data: Path, tmp_path: Path, cache_env) -> None:
    real = _real_folder(real_data, tmp_path)
    refused = covidct("train", "--data", real, "--out", tmp_path / "r0", *TINY_TRAIN, env=cache_env)
    assert refused.returncode == 2
    assert "--auto-split patient" in " ".join(refused.stderr.split())
    by_patient = covidct(
        "train",
        "--data",
        real,
        "--out",
        tmp_path / "r1",
        *TINY_TRAIN,
        "--auto-split",
        "patient",
        env=cache_env,
    )
    assert by_patient.returncode == 2 and "at least 3 are needed" in " ".join(
        by_patient.stderr.split()
    )
    run = tmp_path / "r2"
    ok = covidct(
        "train",
        "--data",
        real,
        "--out",
        run,
        *TINY_TRAIN,
        "--epochs",
        "1",
        "--auto-split",
        "slice",
        env=cache_env,
    )
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    card = (run / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card and "Trained on synthetic data" not in card
    assert "automatic by slice" in card
    evaluated = covidct("evaluate", "--run", run, "--data", real, "--split", "test", env=cache_env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (run / "eval-test" / "metrics.json").is_file()
    assert (run / "eval-test" / "confusion_matrix.png").is_file()


def test_unknown_backbone_is_a_clear_cli_error(tmp_path: Path, synth_dir: Path) -> None:
    result = covidct(
        "train", "--data", synth_dir, "--out", tmp_path / "r", "--backbone", "densenet161"
    )
    assert result.returncode == 2
    assert "Keras has no DenseNet161" in result.stderr and "Traceback" not in result.stderr


def test_bad_weights_fail_before_the_run_directory_is_written(
    tmp_path: Path, synth_dir: Path, cache_env
) -> None:
    run = tmp_path / "r"
    result = covidct(
        "train",
        "--data",
        synth_dir,
        "--out",
        run,
        *TINY_TRAIN[:4],
        "--weights",
        tmp_path / "missing.weights.h5",
        env=cache_env,
    )
    assert result.returncode == 2 and "no such file" in result.stderr
    assert not run.exists()


def test_best_checkpoint_prefers_the_later_epoch_on_a_tie(tmp_path: Path) -> None:
    import keras

    from training.fit import MONITOR, _best_checkpoint

    (tmp_path / "checkpoints").mkdir()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    state: dict = {"done": [], "best": None}
    callback = _best_checkpoint(tmp_path / "checkpoints" / "best.weights.h5", tmp_path, state)
    callback.set_model(model)
    for epoch, value in enumerate([0.8, 1.0, 0.9, 1.0, float("nan")]):
        callback.on_epoch_end(epoch, {MONITOR: value})
    assert (state["best"], state["best_epoch"]) == (1.0, 4)
    saved = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert saved["best_epoch"] == 4 and (tmp_path / "checkpoints" / "best.weights.h5").is_file()
