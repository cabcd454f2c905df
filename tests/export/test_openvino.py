"""The openvino target's machine rules: which precision a CPU gets, and what it refuses."""

from __future__ import annotations

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
