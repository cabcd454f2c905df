"""TritonBackend turns a malformed server answer into an InferenceError (502), not a crash."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from covidct.config import ModelSpec
from gateway.errors import InferenceError
from gateway.settings import GatewaySettings
from gateway.triton import TritonBackend


class _Result:
    def __init__(self, arrays: dict[str, Any]) -> None:
        self._arrays = arrays

    def get_response(self) -> Any:
        return SimpleNamespace(model_version="1")

    def as_numpy(self, name: str) -> Any:
        value = self._arrays[name]
        if isinstance(value, Exception):
            raise value
        return value


@pytest.mark.parametrize(
    "arrays",
    [
        {"probabilities": ValueError("cannot reshape array of size 0 into shape (1,3)")},
        {"probabilities": None, "cam": np.zeros((1, 2, 2, 3), np.float32)},
        {"probabilities": np.zeros((2, 3), np.float32), "cam": np.zeros((2, 2, 2, 3))},
    ],
)
def test_malformed_outputs_are_an_inference_error(arrays: dict[str, Any]) -> None:
    spec = ModelSpec(image_size=32)

    async def call() -> None:
        backend = TritonBackend(GatewaySettings(triton_url="127.0.0.1:1"))

        async def infer(*args: Any, **kwargs: Any) -> _Result:
            return _Result({"cam": np.zeros((1, 2, 2, 3), np.float32), **arrays})

        backend._client.infer = infer  # type: ignore[method-assign]
        try:
            await backend.infer(np.zeros((1, 32, 32, 1), np.uint8), spec, "1")
        finally:
            await backend.close()

    with pytest.raises(InferenceError):
        asyncio.run(call())
