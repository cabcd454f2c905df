"""Triton's model control (gRPC) for one model, as a zero-downtime redeploy drives it.

Zero-downtime protocol (Triton in explicit model-control mode):

1. ``load_versions([old, new])``: Triton loads the model with a config override whose
   version policy names both; a reload never takes a serving version away (the old one
   answers until its replacement is ready), so ``old`` serves throughout.
2. The gateway is switched to ``new`` (one assignment; every request is served wholly by
   the version it started with).
3. Drain: wait until the gateway reports no request in flight on ``old``.
4. ``load_versions([new])``: the old version is unloaded, ``new`` keeps serving.

After each load the repository's config.pbtxt is rewritten to the same pinned policy, so a
restarted Triton serves exactly what was being served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from covidct.addresses import resolve_targets
from covidct.errors import CovidctError
from covidct.modelconfig import config_json, parse_config
from export.repository import pinned_config, write_config

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeployError(CovidctError, RuntimeError):
    """A redeploy or rollback failed; the message says which step and why.

    The command line exits 1 on it, as on a gate rejection: a deployment that did not happen
    (whatever the cause, the old version still serves), apart from a mistyped command (2).
    """

    exit_code = 1


class TritonControl:
    """Triton's model-control API (gRPC) for one model."""

    def __init__(self, url: str, model: str, timeout_s: float = 300.0) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.url, self.model, self.timeout_s = url, model, timeout_s

    def ready_versions(self) -> list[int]:
        """Versions of the model Triton has READY."""
        try:
            index = self.client.get_model_repository_index(as_json=True)
        except Exception as e:  # tritonclient raises its own exception type for everything
            raise DeployError(f"Triton at {self.url} is not reachable: {e}") from e
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == self.model
            and m.get("state") == "READY"
            and str(m.get("version", "")).isdigit()
        )

    def load_versions(self, model_dir: Path, versions: list[int], spec_version: int) -> None:
        """Serve exactly ``versions`` (config of ``spec_version``), then write it to disk.

        Raises:
            DeployError: Triton refused (not in explicit mode, or a version failed to load);
                Triton keeps serving what it served before.
        """
        text = pinned_config(model_dir, spec_version, versions)
        started = time.perf_counter()
        try:
            self.client.load_model(self.model, config=config_json(parse_config(text)))
        except Exception as e:
            message = str(e)
            if "polling is enabled" in message or "explicit" in message.lower():
                message += " (start Triton with --model-control explicit for redeploys)"
            raise DeployError(f"Triton could not load versions {versions}: {message}") from e
        missing = sorted(set(versions) - set(self.ready_versions()))
        if missing:
            raise DeployError(f"Triton loaded the model but versions {missing} are not ready")
        write_config(model_dir, text)
        seconds = time.perf_counter() - started
        log.info("Triton %s serves versions %s (%.1f s)", self.url, versions, seconds)

    def infer(self, version: int, images: np.ndarray, spec_input: str, output: str) -> np.ndarray:
        """``output`` for a uint8 batch, from exactly ``version`` (else DeployError)."""
        grpc = self._grpc
        inp = grpc.InferInput(spec_input, list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        result = self.client.infer(
            self.model,
            [inp],
            model_version=str(version),
            outputs=[grpc.InferRequestedOutput(output)],
            client_timeout=60,
        )
        served = str(result.get_response().model_version)
        if served != str(version):
            raise DeployError(f"asked version {version}, Triton answered with {served}")
        return np.asarray(result.as_numpy(output))


class TritonFleet:
    """Every Triton replica of one deployment (``HOST:PORT``, a comma-separated list, or
    ``dns:NAME:PORT`` resolved once), driven together: a load happens on all of them at once,
    and a version counts as ready only where every replica has it ready. A replica that fails
    fails the step, naming it; the others keep what they served (a load never takes a serving
    version away), and the caller puts the old version back everywhere."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float = 300.0,
        replicas: list[TritonControl] | None = None,
    ) -> None:
        if replicas is None:
            try:
                addresses = resolve_targets(url)
            except ValueError as e:
                raise DeployError(str(e)) from e
            replicas = [TritonControl(a, model, timeout_s) for a in addresses]
        self.replicas = replicas
        self.url, self.model = url, model

    def reachable(self) -> tuple[TritonFleet, list[str]]:
        """The replicas that answer now, and the addresses of those that do not. An undo
        works on the first: one that is down reads the pinned config.pbtxt when it is back."""
        live, down = [], []
        for replica in self.replicas:
            try:
                replica.ready_versions()
            except DeployError:
                down.append(replica.url)
            else:
                live.append(replica)
        return TritonFleet(self.url, self.model, replicas=live), down

    def __iter__(self) -> Iterator[TritonControl]:
        return iter(self.replicas)

    def __len__(self) -> int:
        return len(self.replicas)

    def _each(self, call: Callable[[TritonControl], T], what: str) -> list[T]:
        """``call(replica)`` on every replica at once; DeployError naming each that failed."""
        if len(self.replicas) <= 1:
            return [call(r) for r in self.replicas]
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            futures = [pool.submit(call, r) for r in self.replicas]
        failed: list[str] = []
        results: list[T] = []
        for replica, future in zip(self.replicas, futures, strict=True):
            try:
                results.append(future.result())
            except DeployError as e:
                failed.append(str(e) if replica.url in str(e) else f"{replica.url}: {e}")
        if failed:
            raise DeployError(
                f"{what} failed on {len(failed)} of {len(self)} replicas: " + "; ".join(failed)
            )
        return results

    def ready_versions(self) -> list[int]:
        """Versions every replica has READY."""
        each = self._each(lambda r: set(r.ready_versions()), "reading ready versions")
        return sorted(set.intersection(*each)) if each else []

    def ready_anywhere(self) -> list[int]:
        """Versions some reachable replica has READY (what an undo must unload)."""
        found: set[int] = set()
        for replica in self.replicas:
            try:
                found.update(replica.ready_versions())
            except DeployError:
                continue
        return sorted(found)

    def load_versions(self, model_dir: Path, versions: list[int], spec_version: int) -> None:
        """Serve exactly ``versions`` on every replica (see ``TritonControl.load_versions``)."""
        self._each(
            lambda r: r.load_versions(model_dir, versions, spec_version),
            f"loading versions {versions}",
        )
