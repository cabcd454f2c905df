"""The gateway's Triton client: tritonclient.grpc.aio, opened once, closed on shutdown.

The ModelSpec is read from the served model's config (parameter ``covidct_model_spec``),
so the gateway hard-codes neither the image size nor the class names. Every call names the
model version: which one serves is the gateway's state (``gateway.versions``), never
Triton's "newest", so loading a new version beside the old one changes nothing until the
gateway is switched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from covidct.config import ModelSpec
from covidct.modelconfig import SPEC_PARAMETER, ConfigError, spec_of
from gateway.errors import InferenceError, InferenceTimeout, NotReady
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 2.0  # a readiness probe never waits longer on Triton


@dataclass(frozen=True)
class Inference:
    probabilities: np.ndarray  # [N, 3]
    cam: np.ndarray  # [N, h, w, 3]
    model_version: str


class Backend(Protocol):
    """What the routes need from Triton (the real client, or a fake in unit tests)."""

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]: ...
    async def ready(self, version: str) -> bool: ...
    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference: ...
    async def versions(self) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


class TritonBackend:
    """Async gRPC client for one model."""

    def __init__(self, settings: GatewaySettings) -> None:
        import tritonclient.grpc.aio as grpcclient

        size = settings.grpc_max_message_mb * 1024 * 1024
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(
            settings.triton_url,
            channel_args=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                # After Triton restarts, reconnect within about a second (gRPC's default
                # backoff grows to 120 s): calls meanwhile fail fast with UNAVAILABLE (503).
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._settings = settings

    def _translate(self, e: Exception) -> Exception:
        status = str(getattr(e, "status", lambda: "")() or "")
        text = str(e)
        if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
            return InferenceTimeout(
                f"no answer from Triton within {self._settings.request_timeout_s:g} s"
            )
        if "UNAVAILABLE" in status or "unavailable" in text.lower() or "not ready" in text:
            return NotReady(f"Triton or model {self._settings.model_name} is not available")
        log.warning("Triton error: %s", text[:500])
        return InferenceError("Triton could not run the model; see the gateway log")

    async def model_spec(self, version: str) -> tuple[ModelSpec, str]:
        from tritonclient.utils import InferenceServerException

        try:
            response = await self._client.get_model_config(self._settings.model_name, version)
        except InferenceServerException as e:
            raise self._translate(e) from e
        try:
            spec = spec_of(response.config)
        except ConfigError as e:
            raise InferenceError(f"model {self._settings.model_name}: {e}") from e
        if spec is None:
            raise InferenceError(
                f"model {self._settings.model_name} carries no ModelSpec "
                f"parameter {SPEC_PARAMETER}; export it with covidct export"
            )
        return spec, version

    async def ready(self, version: str) -> bool:
        try:
            timeout = min(READY_TIMEOUT_S, self._settings.request_timeout_s)
            return bool(await self._client.is_server_ready(client_timeout=timeout)) and bool(
                await self._client.is_model_ready(
                    self._settings.model_name, version, client_timeout=timeout
                )
            )
        except Exception:  # an unreachable server is simply not ready
            return False

    async def infer(self, images: np.ndarray, spec: ModelSpec, version: str) -> Inference:
        from tritonclient.utils import InferenceServerException

        grpc = self._grpc
        inp = grpc.InferInput(spec.input_name, list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        outputs = [
            grpc.InferRequestedOutput(spec.probabilities_name),
            grpc.InferRequestedOutput(spec.cam_name),
        ]
        try:
            result = await self._client.infer(
                self._settings.model_name,
                [inp],
                model_version=version,
                outputs=outputs,
                client_timeout=self._settings.request_timeout_s,
            )
        except InferenceServerException as e:
            raise self._translate(e) from e
        response = result.get_response()
        try:
            probabilities = result.as_numpy(spec.probabilities_name)
            cam = result.as_numpy(spec.cam_name)
        except ValueError as e:  # the server's tensor does not match its declared shape
            log.warning("malformed Triton outputs: %s", e)
            raise InferenceError("Triton returned malformed outputs") from e
        if probabilities is None or cam is None or len(probabilities) != len(images):
            raise InferenceError("Triton's answer lacks the model's outputs for every image")
        return Inference(probabilities, cam, str(response.model_version))

    async def versions(self) -> list[dict[str, Any]]:
        from tritonclient.utils import InferenceServerException

        try:
            index = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as e:
            raise self._translate(e) from e
        return [m for m in index.get("models", []) if m.get("name") == self._settings.model_name]

    async def close(self) -> None:
        await self._client.close()
