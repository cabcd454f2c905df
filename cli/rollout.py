"""``covidct redeploy``, ``covidct rollback`` and ``covidct deployments``: zero-downtime
version switches and their log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cli.common import DEFAULT_REPOSITORY, ModelOpt, RepositoryOpt, err
from rollout.deploylog import LOG_NAME
from rollout.options import ROLLBACK_WATCH_SECONDS, DeployOptions, GateTolerances

if TYPE_CHECKING:
    from rollout.deployment import StepEvent

app = typer.Typer()

#: The defaults of both commands' options: rollout's own (``rollout.options``).
DEFAULTS = DeployOptions(repository=DEFAULT_REPOSITORY)

GatewayOpt = Annotated[str, typer.Option("--gateway", help="Gateway URL.")]
TritonOpt = Annotated[
    str,
    typer.Option(
        "--triton",
        help="Triton gRPC address (explicit model control): HOST:PORT, a comma-separated list "
        "or dns:NAME:PORT; every replica is loaded, smoke-tested and unloaded together.",
    ),
]
AdminKeyOpt = Annotated[
    str | None, typer.Option(envvar="COVIDCT_ADMIN_KEY", help="The gateway's X-Admin-Key.")
]
LogOpt = Annotated[
    Path | None, typer.Option(help=f"Deployment log (default: REPOSITORY/{LOG_NAME}).")
]
SmokeOpt = Annotated[
    Path | None,
    typer.Option(help="Slices for the smoke test (default: the real CT slices)."),
]
WatchOpt = Annotated[float, typer.Option(help="Seconds to watch the error rate after the switch.")]
ErrorRateOpt = Annotated[
    float, typer.Option(help="Error rate after the switch that triggers a rollback.")
]


ICONS = {"ok": "[green]ok[/]", "skip": "[dim]done before[/]", "fail": "[bold red]failed[/]"}


class StepDisplay:
    """Redeploy/rollback progress on the terminal: a spinner per step, then its timing."""

    def __init__(self) -> None:
        from rich.status import Status

        self._status: Status | None = None

    def __call__(self, event: StepEvent) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if event.status == "start":
            self._status = err.status(f"{event.step} ...")
            self._status.start()
            return
        timing = f" ({event.seconds:.1f} s)" if event.seconds else ""
        err.print(
            f"{ICONS.get(event.status, event.status)} [bold]{event.step}[/]{timing}: "
            f"{event.detail}",
            soft_wrap=True,
        )


@app.command()
def redeploy(
    data: Annotated[
        Path, typer.Option(help="COVIDx-CT folder (its --gate-split split is the gate's).")
    ],
    train_config: Annotated[
        Path | None, typer.Option(help="train_config.json to train the candidate with.")
    ] = None,
    from_run: Annotated[
        Path | None, typer.Option(help="A finished run to deploy instead of training.")
    ] = None,
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    gateway: GatewayOpt = DEFAULTS.gateway_url,
    triton: TritonOpt = DEFAULTS.triton_url,
    admin_key: AdminKeyOpt = None,
    model: ModelOpt = DEFAULTS.model,
    dry_run: Annotated[
        bool, typer.Option(help="Train, evaluate and gate only; change nothing.")
    ] = False,
    max_macro_f1_drop: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Gate: allowed macro-F1 drop.")
    ] = DEFAULTS.tolerances.macro_f1,
    max_covid_sensitivity_drop: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Gate: allowed COVID-19 sensitivity drop.")
    ] = DEFAULTS.tolerances.covid_sensitivity,
    max_covid_ppv_drop: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Gate: allowed COVID-19 PPV drop.")
    ] = DEFAULTS.tolerances.covid_ppv,
    gate_split: Annotated[
        str,
        typer.Option(
            help="Split the gate compares on: test, or val (keeps test for reported figures)."
        ),
    ] = DEFAULTS.gate_split,
    smoke_slices: SmokeOpt = None,
    watch_seconds: WatchOpt = DEFAULTS.watch_seconds,
    max_error_rate: ErrorRateOpt = DEFAULTS.max_error_rate,
    runs_dir: Annotated[
        Path, typer.Option(help="Where --train-config runs go.")
    ] = DEFAULTS.runs_dir,
    log: LogOpt = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Prepared-cache root.")] = None,
) -> None:
    """Retrain (or take a run), gate it against production, and switch with zero downtime."""
    from rollout.redeploy import describe
    from rollout.redeploy import redeploy as run_redeploy

    tolerances = GateTolerances(
        macro_f1=max_macro_f1_drop,
        covid_sensitivity=max_covid_sensitivity_drop,
        covid_ppv=max_covid_ppv_drop,
    )
    opts = DeployOptions(
        data=data,
        run=from_run,
        train_config=train_config,
        repository=repository,
        gateway_url=gateway,
        triton_url=triton,
        admin_key=admin_key,
        model=model,
        dry_run=dry_run,
        tolerances=tolerances,
        gate_split=gate_split,
        smoke_slices=smoke_slices,
        watch_seconds=watch_seconds,
        max_error_rate=max_error_rate,
        runs_dir=runs_dir,
        log_path=log,
        cache_root=cache_dir,
    )
    entry = run_redeploy(opts, StepDisplay())  # a DeployError exits 1 (cli.main)
    for reason in (entry.get("gate") or {}).get("reasons", []):
        err.print(f"  gate: {reason}", soft_wrap=True)
    print(describe(entry))
    if entry["outcome"] == "rejected":
        raise typer.Exit(1)


@app.command()
def rollback(
    to: Annotated[
        int | None, typer.Option(help="Version to serve (default: the one replaced last).")
    ] = None,
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    gateway: GatewayOpt = DEFAULTS.gateway_url,
    triton: TritonOpt = DEFAULTS.triton_url,
    admin_key: AdminKeyOpt = None,
    model: ModelOpt = DEFAULTS.model,
    smoke_slices: SmokeOpt = None,
    watch_seconds: WatchOpt = ROLLBACK_WATCH_SECONDS,
    max_error_rate: ErrorRateOpt = DEFAULTS.max_error_rate,
    log: LogOpt = None,
) -> None:
    """Switch back to an earlier version with the same zero-downtime protocol."""
    from rollout.redeploy import describe
    from rollout.redeploy import rollback as run_rollback

    opts = DeployOptions(
        repository=repository,
        gateway_url=gateway,
        triton_url=triton,
        admin_key=admin_key,
        model=model,
        smoke_slices=smoke_slices,
        watch_seconds=watch_seconds,
        max_error_rate=max_error_rate,
        log_path=log,
    )
    entry = run_rollback(opts, StepDisplay(), to)  # a DeployError exits 1 (cli.main)
    print(describe(entry))


@app.command()
def deployments(
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
    log: LogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
) -> None:
    """The deployment log as a table: every redeploy, rejection and rollback."""
    from rich.table import Table

    from rollout.deploylog import LOG_NAME, TABLE_COLUMNS, DeploymentLog, table_rows

    entries = DeploymentLog(log or repository / LOG_NAME).read()
    if as_json:
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return
    table = Table(title=f"deployments ({len(entries)}); figures: candidate / production")
    for column in TABLE_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in table_rows(entries):
        table.add_row(*row)
    Console(width=200).print(table)
