"""The gateway's settings: the one place its ``COVIDCT_*`` environment variables are read."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from covidct.addresses import DEFAULT_TRITON_URL, GATEWAY_PORT, LOCALHOST
from covidct.config import DEFAULT_MODEL_NAME

MiB = 1024 * 1024
#: Working memory allowed for decoding the largest slice the decoder takes (4096² pixels,
#: 16-bit DICOM: raw, HU float32, windowed, resized), with room to spare so the budget holds
#: on another library version; SECURITY.md (memory budget) gives its measured peak, and
#: ``covidct bench overload`` checks the gateway's RSS against ``memory_budget``.
DECODE_BYTES = 256 * MiB
#: The decoded grey slice a request keeps for its heatmap (4096² x uint8).
KEPT_SLICE_BYTES = 16 * MiB


class GatewaySettings(BaseSettings):
    """Gateway settings, from ``COVIDCT_*`` environment variables (or a ``.env`` file).

    Every variable is listed in ``.env.example``. Tests override them by passing an instance
    to ``gateway.app.create_app``.
    """

    # env_ignore_empty: a variable left empty (as in .env.example) means "unset", not "".
    model_config = SettingsConfigDict(
        env_prefix="COVIDCT_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    host: str = LOCALHOST  # where ``python -m gateway`` listens (0.0.0.0 in a container)
    port: int = GATEWAY_PORT
    # One Triton gRPC address, a comma-separated list, or dns:NAME:PORT (every address NAME
    # resolves to, re-resolved at each probe): gateway/replicas.py balances over them.
    triton_url: str = DEFAULT_TRITON_URL
    triton_probe_s: float = 1.0  # readiness probe of every replica (readmits ejected ones)
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str = ""  # version served at start; empty: the newest ready one
    # A folder shared by every gateway process of one deployment (workers, pods): the serving
    # record and heartbeats of gateway/fleet.py, so all switch together; it overrides
    # model_version once written. Empty: this process decides alone (one worker only).
    serving_dir: str = ""
    request_timeout_s: float = 10.0
    max_in_flight: int = 32
    max_upload_bytes: int = 64 * 1024 * 1024  # one slice (a 512x512 DICOM is about 0.5 MB)
    preprocess_workers: int = 2
    # An 8-bit grey PNG of at most this many pixels (a CT slice: 512 x 512) is preprocessed on
    # the event loop: with the compiled kernels that job is so short that handing it to a
    # worker thread costs more CPU than the job itself under load (`covidct bench capacity`,
    # BENCHMARKS.md: event loop vs worker threads per gateway core). Anything else (DICOM,
    # JPEG, larger or other PNGs), and every upload while the gateway is shedding load (a 503
    # for saturation in the last second: the loop then answers those first), goes to the
    # preprocess_workers threads. 0: always threads.
    preprocess_inline_pixels: int = 512 * 512
    grpc_max_message_mb: int = 256
    max_study_slices: int = 1000
    max_study_bytes: int = 1024 * 1024 * 1024  # spooled to disk past 1 MiB, never held whole
    study_concurrency: int = 8  # a study's slices in flight at once (each counted)
    max_studies_in_flight: int = 4  # bounds the spool: this x max_study_bytes of disk
    body_idle_timeout_s: float = 15.0  # a body that stalls this long mid-way is answered 408
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None  # X-Admin-Key for /admin/v1/*; unset: admin disabled
    cors_origins: list[str] = []
    retry_after_s: int = 1

    def memory_budget(self) -> int:
        """Bytes the gateway may hold for requests beyond its base RSS, at most:
        ``max_in_flight x (2 x max_upload_bytes + KEPT_SLICE_BYTES)`` (a body, its chunks
        while being joined, and the decoded slice kept for a heatmap) plus
        ``preprocess_workers x DECODE_BYTES`` (decoding runs in that many threads only).
        A study's slices count in flight one by one; its body is spooled to disk."""
        per_request = 2 * self.max_upload_bytes + KEPT_SLICE_BYTES
        return self.max_in_flight * per_request + self.preprocess_workers * DECODE_BYTES


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    """The settings from the environment, read once per process."""
    return GatewaySettings()
