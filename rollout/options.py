"""What ``covidct redeploy`` and ``covidct rollback`` are asked to do, and its defaults.

The one source of those defaults: ``DeployOptions`` and ``GateTolerances`` here, which the
command line reads its option defaults from. This module imports only the standard library
and covidct's light modules, so ``covidct --help`` stays fast; the deployment itself is in
``rollout.deployment`` and ``rollout.redeploy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covidct.addresses import DEFAULT_GATEWAY_URL, DEFAULT_TRITON_URL
from covidct.config import DEFAULT_MODEL_NAME
from covidct.errors import CovidctError
from rollout.deploylog import LOG_NAME, DeploymentLog, Journal

#: ``covidct rollback``'s watch window: it returns to a version that served before, so a short
#: watch only has to catch a version that no longer loads or answers.
ROLLBACK_WATCH_SECONDS = 10.0


#: The splits a redeploy's gate may compare on.
GATE_SPLITS = ("test", "val")


class OptionsError(CovidctError, ValueError):
    """A redeploy or rollback option is invalid; the message names it."""


@dataclass(frozen=True)
class GateTolerances:
    """How much each figure may drop (absolute, as a fraction: 0.01 is one point)."""

    macro_f1: float = 0.01
    covid_sensitivity: float = 0.02
    covid_ppv: float = 0.02

    def __post_init__(self) -> None:
        for name in ("macro_f1", "covid_sensitivity", "covid_ppv"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"tolerance {name}={getattr(self, name)} must be in [0, 1]")


@dataclass(frozen=True)
class DeployOptions:
    """Everything ``covidct redeploy`` / ``covidct rollback`` were asked to do."""

    repository: Path
    data: Path | None = None
    run: Path | None = None
    train_config: Path | None = None
    runs_dir: Path = Path("runs")
    model: str = DEFAULT_MODEL_NAME
    gateway_url: str = DEFAULT_GATEWAY_URL
    triton_url: str = DEFAULT_TRITON_URL
    admin_key: str | None = None
    tolerances: GateTolerances = field(default_factory=GateTolerances)
    #: The split the gate compares candidate and production on: "test" (the default), or
    #: "val", which keeps the test split for the figures a team reports.
    gate_split: str = "test"
    dry_run: bool = False
    smoke_slices: Path | None = None
    smoke_max_latency_ms: float = 5000.0
    watch_seconds: float = 120.0
    max_error_rate: float = 0.05
    drain_timeout_s: float = 120.0
    log_path: Path | None = None
    cache_root: Path | None = None

    def __post_init__(self) -> None:
        if self.gate_split not in GATE_SPLITS:
            raise OptionsError(
                f"--gate-split {self.gate_split!r}: choose one of {', '.join(GATE_SPLITS)}"
            )

    @property
    def model_dir(self) -> Path:
        """The model's folder in the repository."""
        return self.repository / self.model

    @property
    def deployment_log(self) -> DeploymentLog:
        """The log every attempt ends in (default: ``REPOSITORY/deployments.jsonl``)."""
        return DeploymentLog(self.log_path or self.repository / LOG_NAME)

    @property
    def journal(self) -> Journal:
        """The journal of the deployment in progress, beside the model folder."""
        return Journal(self.repository / f".deploy-{self.model}.json")
