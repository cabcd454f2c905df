"""The demo build's output: TensorFlow's start-up chatter hidden, everything else shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.launch import DemoBuildError, child_env, is_harmless, run_phase

# As a demo build's training and export print them (TensorFlow 2.x, absl logging).
HARMLESS = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796409081.858110   11783 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1796409081.933220   11783 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "W0000 00:00:1796409090.100000   11783 some_file.cc:42] a warning, not an error",
    "E0000 00:00:1796409092.981011   11783 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; "
    "signature=input_dataset:variant, other_arguments: -> handle:variant>",
    "INFO tensorflow: Assets written to: /tmp/run/.tmp-saved_model/assets",
    "",
]
SHOWN = [
    "E0000 00:00:1796409092.981011   11783 node_def_util.cc:682] NodeDef mentions attribute "
    "some_other_attribute which is not in the op definition",
    "E0000 00:00:1796409100.000000   11783 op_kernel.cc:1830] OP_REQUIRES failed: OOM",
    "F0000 00:00:1796409100.000000   11783 logging.cc:50] Check failed: size > 0",
    "Traceback (most recent call last):",
    'RuntimeError: tf2onnx failed on "run/saved_model"',
    "INFO training.train: phase scratch: epochs 1-4, learning rate 0.001",
    "WARNING tensorflow: a Python warning of TensorFlow's",
    "error: run has no SavedModel",
]


@pytest.mark.parametrize("line", HARMLESS)
def test_tensorflow_start_up_lines_are_hidden(line: str) -> None:
    assert is_harmless(line + "\n")


@pytest.mark.parametrize("line", SHOWN)
def test_errors_and_the_project_s_own_lines_are_shown(line: str) -> None:
    assert not is_harmless(line + "\n")


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


NOISY = (
    "import sys\n"
    f"for line in {[*HARMLESS, SHOWN[1]]!r}:\n"
    "    sys.stderr.write(line + '\\n')\n"
    "print('epoch 1/1', flush=True)\n"
)


def test_a_phase_shows_its_title_its_stdout_and_only_the_real_errors(
    capfd: pytest.CaptureFixture[str],
) -> None:
    run_phase("demo 2/3: training", _child(NOISY))
    out, err = capfd.readouterr()
    assert out.splitlines() == ["demo 2/3: training", "epoch 1/1"]
    assert err.splitlines() == [SHOWN[1]]


def test_a_failed_phase_prints_its_last_lines_unfiltered(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(DemoBuildError, match=r"failed at 'demo 3/3: export' \(exit 3\)"):
        run_phase("demo 3/3: export", _child(NOISY + "sys.exit(3)\n"))
    err = capfd.readouterr().err
    assert err.count(SHOWN[1]) == 2  # as it came, then in the tail
    assert "unfiltered" in err and HARMLESS[0] in err


def test_the_child_environment_hides_keras_shuffle_warning_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "default")
    code = (
        "import warnings\n"
        "warnings.warn('`shuffle=True` was passed, but will be ignored since the data `x` was "
        "provided as a tf.data.Dataset.', UserWarning)\n"
        "warnings.warn('another warning', UserWarning)\n"
    )
    env = child_env()
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"  # C++ INFO and WARNING off
    result = subprocess.run(_child(code), env=env, capture_output=True, text=True, check=True)
    assert "shuffle" not in result.stderr and "another warning" in result.stderr
