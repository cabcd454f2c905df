"""The openvino target's machine rules: which precision a CPU gets, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from export.onnx import ExportError
from export.openvino import RELEVANT_FLAGS, check_precision, cpu_flags, default_cpu_target, supports


@pytest.mark.parametrize(
    ("flags", "precision"),
    [
        (["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "bf16"),  # AMD EPYC (Zen 4)
        (["avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"], "bf16"),  # Xeon with AMX
        (["avx2", "avx512f", "avx512_vnni"], "fp32"),  # plain AVX-512
        (["avx2"], "fp32"),
        ([], "fp32"),
    ],
)
def test_default_cpu_target_follows_the_instruction_sets(flags: list[str], precision: str) -> None:
    target, chosen, why = default_cpu_target(flags)
    assert (target, chosen) == ("openvino", precision)
    assert all(f in why for f in flags)  # the choice names the flags that decided it


def test_this_machine_s_flags_and_openvino_agree_on_bf16() -> None:
    flags = cpu_flags()
    assert set(flags) <= set(RELEVANT_FLAGS)
    has_bf16 = bool({"amx_bf16", "avx512_bf16"} & set(flags))
    assert supports("bf16") == has_bf16
    assert default_cpu_target()[1] == ("bf16" if has_bf16 else "fp32")


def test_unknown_or_unsupported_precisions_are_refused() -> None:
    with pytest.raises(ExportError, match="must be one of fp32, bf16"):
        check_precision("fp8")
    check_precision("fp32")
    if not supports("bf16"):
        with pytest.raises(ExportError, match="needs a CPU with AMX or AVX512_BF16"):
            check_precision("bf16")


def _fake_export(refuse: set[str], calls: list[tuple[str, str, bool]]) -> Any:
    """export_run as far as export_auto sees it: a refused bf16 comes back as fp32 with the
    gate's reason when the fallback is asked for (the real flow: tests/integration)."""

    def export_run(
        _run: Path, _repo: Path, serving: Any, *_: Any, fallback_fp32: bool = False
    ) -> dict[str, Any]:
        calls.append((serving.target, serving.precision, fallback_fp32))
        openvino: dict[str, Any] = {"precision": serving.precision}
        if serving.precision in refuse:
            openvino = {"precision": "fp32", "fallback": "top-1 agreement is 97.0% (< 99%)"}
        return {"version": len(calls), "serving": serving, "openvino": openvino}

    return export_run


@pytest.mark.parametrize(
    ("flags", "refuse", "tried", "served"),
    [
        (["avx512_bf16"], set(), "bf16", "bf16"),
        (["amx_bf16"], {"bf16"}, "bf16", "fp32"),
        (["avx2"], set(), "fp32", "fp32"),
    ],
)
def test_export_without_target_takes_the_rule_and_falls_back_to_fp32_past_the_gate(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: list[str],
    refuse: set[str],
    tried: str,
    served: str,
) -> None:
    from export import pipeline
    from export.repository import TritonOptions

    calls: list[tuple[str, str, bool]] = []
    monkeypatch.setattr(pipeline, "export_run", _fake_export(refuse, calls))
    manifest, chosen = pipeline.export_auto(
        tmp_path, tmp_path, TritonOptions(instance_count=2), flags=flags
    )
    assert calls == [("openvino", tried, True)]  # one export, allowed to fall back
    assert manifest["serving"].instance_count == 2
    assert chosen.startswith(f"openvino {served}: ") and flags[0] in chosen
    if refuse:
        assert "failed its gate" in chosen and "97.0%" in chosen


def test_export_without_target_keeps_other_errors(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Only the gate falls back: a conversion or repository error is the user's to see."""
    from export import pipeline
    from export.repository import TritonOptions

    def broken(*_: Any, **__: Any) -> None:
        raise ExportError("tf2onnx failed")

    monkeypatch.setattr(pipeline, "export_run", broken)
    with pytest.raises(ExportError, match="tf2onnx failed"):
        pipeline.export_auto(tmp_path, tmp_path, TritonOptions(), flags=["amx_bf16"])


def test_engine_file_says_where_batches_split(tmp_path: Path) -> None:
    from export.openvino import STREAMS_FROM_BATCH, engine_config, read_engine, write_engine

    write_engine(tmp_path, "bf16")
    assert read_engine(tmp_path)["streams_from_batch"] == STREAMS_FROM_BATCH["bf16"] >= 2
    assert engine_config("fp32")["streams_from_batch"] == 0  # LATENCY only
    # A version written before the split existed reads as LATENCY only.
    (tmp_path / "engine.json").write_text('{"engine": "openvino", "precision": "bf16"}')
    assert read_engine(tmp_path)["streams_from_batch"] == 0
