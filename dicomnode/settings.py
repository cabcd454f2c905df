"""The DICOM node's settings: the one place its ``COVIDCT_PACS_*`` environment variables are read.

Other modules of the node take these values as parameters; none reads the environment itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from covidct.addresses import DEFAULT_GATEWAY_URL, LOCALHOST
from dicomnode.errors import DicomNodeError

MiB = 1024 * 1024
GiB = 1024 * MiB
#: The node's DICOM port (11112: the registered DICOM port that needs no privileges).
DICOM_PORT = 11112
#: Status, metrics, DICOMweb STOW-RS and the study viewer.
NODE_HTTP_PORT = 8090


class Destination(NamedTuple):
    """Where results are sent: a remote AE (a PACS) by title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def check_ae_title(title: str, what: str = "AE title") -> str:
    """``title`` stripped, if it is a valid DICOM AE title (1 to 16 characters, no backslash,
    no control characters).

    Raises:
        ValueError: what is wrong with it.
    """
    stripped = title.strip()
    if not stripped or len(stripped) > 16:
        raise ValueError(f"{what} {title!r}: 1 to 16 characters expected")
    if "\\" in stripped or any(ord(c) < 32 or ord(c) > 126 for c in stripped):
        raise ValueError(f"{what} {title!r}: printable ASCII without backslash expected")
    return stripped


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` (an IPv6 host in brackets) as a Destination.

    Raises:
        ValueError: not of that form, with what was expected.
    """
    expected = f"destination {text!r}: expected AET@host:port, for example PACS@10.0.0.5:104"
    aet, at, address = text.strip().partition("@")
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not at or not colon or not host or not port.isdigit():
        raise ValueError(expected)
    if not 0 < int(port) < 65536:
        raise ValueError(f"destination {text!r}: port {port} is not in 1..65535")
    return Destination(check_ae_title(aet, "destination AE title"), host, int(port))


class NodeSettings(BaseSettings):
    """DICOM node settings, from ``COVIDCT_PACS_*`` environment variables (or a ``.env`` file).

    Every variable is listed in ``.env.example``. Tests build an instance directly.
    """

    # env_ignore_empty: a variable left empty (as in .env.example) means "unset", not "".
    model_config = SettingsConfigDict(
        env_prefix="COVIDCT_PACS_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    ae_title: str = "COVIDCT"
    host: str = LOCALHOST  # DICOM and HTTP listen here (0.0.0.0 only in a container)
    port: int = DICOM_PORT
    gateway_url: str = DEFAULT_GATEWAY_URL
    gateway_api_key: SecretStr | None = None
    gateway_timeout_s: float = 300.0  # one whole series through /v1/predict/study
    destination: str = ""  # AET@host:port; empty: results stay in the outbox
    # Comma-separated calling AE titles; empty: any calling AE is accepted.
    allowed_ae_titles: Annotated[list[str], NoDecode] = []
    stable_s: float = 10.0
    # A series still receiving this long after its first instance is skipped (a sender that
    # never stops, or resends forever, must not hold a series open).
    max_series_s: float = 3600.0
    spool_dir: Path = Path("pacs-spool")
    http_port: int = NODE_HTTP_PORT
    # Selection: which complete series get a result (the rest are recorded with a reason).
    min_slices: int = 20
    min_slice_thickness_mm: float = 0.5
    max_slice_thickness_mm: float = 5.0
    # Caps, checked before anything is written: over one, the C-STORE is answered 0xA700.
    max_instance_bytes: int = 64 * MiB
    max_series_instances: int = 2000
    max_association_instances: int = 5000
    max_spool_bytes: int = 20 * GiB
    max_associations: int = 8
    # HTTP port: the key STOW-RS and the viewer's data ask for (X-API-Key or Bearer); unset:
    # none asked.
    api_key: SecretStr | None = None
    max_stow_bytes: int = 4 * GiB  # one STOW-RS body (a whole series); parts as instances
    body_idle_timeout_s: float = 30.0  # a body that stalls this long is answered 408
    network_timeout_s: float = 60.0  # an idle association is released after this long
    # Source instances are deleted this long after the result is delivered (or the series
    # is skipped); 0: at once.
    keep_hours: float = 0.0
    process_attempts: int = 3  # a series whose processing fails is retried this often
    retry_backoff_s: float = 30.0  # first wait before a retry, doubled each time
    # Salt of the hashed UIDs in logs and the audit log; unset: a random one, kept in the spool.
    audit_salt: SecretStr | None = None
    top_k: int = 3  # most suspicious slices: SR evidence and Secondary Captures
    send_retry_initial_s: float = 2.0  # outbox: first wait while the destination is down
    send_retry_max_s: float = 300.0  # outbox: longest wait between tries
    # DICOMweb: a root (http(s)://host/dicom-web) results are STOWed to, instead of or beside
    # DESTINATION; and the bearer token its server (and PULL_URL's) asks for, if any.
    dicomweb_destination: str = ""
    dicomweb_token: SecretStr | None = None
    dicomweb_timeout_s: float = 60.0  # each DICOMweb request: connect, and each read
    # Pull mode: a DICOMweb root polled with QIDO-RS for new CT series (empty: off), how often,
    # and the first SeriesDate (YYYYMMDD) to look at when no watermark is kept yet (empty:
    # the day the node first polls).
    pull_url: str = ""
    pull_interval_s: float = 30.0
    pull_since: str = ""
    # Study viewer (/studies): hours a processed series' previews, heatmaps and SR are kept
    # for it (0: none kept, the viewer lists nothing), and whether it shows the patient's
    # name, ID and study date (off: not even stored).
    view_keep_hours: float = 24.0
    view_patient_data: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        return str(parse_destination(value)) if value.strip() else ""

    @field_validator("dicomweb_destination", "pull_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r}: expected an http:// or https:// DICOMweb root")
        return value

    @field_validator("pull_since")
    @classmethod
    def _since(cls, value: str) -> str:
        value = value.strip()
        if value and not (len(value) == 8 and value.isdigit()):
            raise ValueError(f"{value!r}: expected a date as YYYYMMDD")
        return value

    @field_validator("allowed_ae_titles", mode="before")
    @classmethod
    def _allowed(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [check_ae_title(str(t), "allowed AE title") for t in value]
        return value

    @field_validator("port", "http_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value < 65536:  # 0: any free port (tests)
            raise ValueError(f"port {value} is not in 0..65535")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> NodeSettings:
        if not 0 < self.min_slice_thickness_mm <= self.max_slice_thickness_mm:
            raise ValueError(
                f"slice thickness range {self.min_slice_thickness_mm}.."
                f"{self.max_slice_thickness_mm} mm is empty or not positive"
            )
        positive = {
            "stable_s": self.stable_s,
            "max_series_s": self.max_series_s,
            "min_slices": self.min_slices,
            "max_instance_bytes": self.max_instance_bytes,
            "max_series_instances": self.max_series_instances,
            "max_association_instances": self.max_association_instances,
            "max_spool_bytes": self.max_spool_bytes,
            "max_associations": self.max_associations,
            "max_stow_bytes": self.max_stow_bytes,
            "body_idle_timeout_s": self.body_idle_timeout_s,
            "dicomweb_timeout_s": self.dicomweb_timeout_s,
            "pull_interval_s": self.pull_interval_s,
            "process_attempts": self.process_attempts,
            "top_k": self.top_k,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        hours_settings = {"keep_hours": self.keep_hours, "view_keep_hours": self.view_keep_hours}
        for name, hours in hours_settings.items():
            if hours < 0:
                raise ValueError(f"{name} must not be negative, not {hours}")
        return self

    def destination_address(self) -> Destination | None:
        """The parsed destination, or None when no destination is set."""
        return parse_destination(self.destination) if self.destination else None

    @property
    def outbox_dir(self) -> Path:
        """Where the outbox keeps results until they are delivered."""
        return self.spool_dir / "outbox"

    @property
    def audit_path(self) -> Path:
        """The JSON-lines audit log."""
        return self.spool_dir / "audit.jsonl"


@lru_cache(maxsize=1)
def get_settings() -> NodeSettings:
    """The settings from the environment, read once per process."""
    return NodeSettings()


def load_settings() -> NodeSettings:
    """The settings from the environment, a bad value reported as one clear error.

    Raises:
        DicomNodeError: a variable has a bad value (each one named).
    """
    try:
        return get_settings()
    except ValidationError as e:
        problems = "; ".join(
            f"COVIDCT_PACS_{str(err['loc'][0]).upper()}: {err['msg']}" if err["loc"] else err["msg"]
            for err in e.errors()
        )
        raise DicomNodeError(f"bad DICOM node settings: {problems}") from e
