"""Which model version answers new requests, and what every version is doing.

The served version is state, not a setting: it starts as ``COVIDCT_MODEL_VERSION`` (empty:
the newest version Triton has ready, resolved once) and changes only through the admin
endpoint, so a redeploy can load a new version beside the old one and then move traffic in
one step. Each request reads the version once and uses it for the ModelSpec and the
inference, so it is served wholly by one version; in-flight counts per version tell a
redeploy when the old version has drained. The event loop is single-threaded: the switch
is a plain assignment between awaits, which no request can observe half done.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from covidct.config import ModelSpec
from gateway.errors import InferenceError, InferenceTimeout, NotReady, VersionConflict
from gateway.triton import Backend

log = logging.getLogger(__name__)

#: Errors that count against a version (the model or Triton failed, not the client's input).
MODEL_ERRORS = (InferenceError, InferenceTimeout, NotReady)


def contract_differences(old: ModelSpec, new: ModelSpec) -> list[str]:
    """What a client would notice when traffic moves from ``old`` to ``new`` (empty: none)."""
    fields = (
        *("name", "class_names", "image_size", "input_name", "input_dtype"),
        *("probabilities_name", "cam_name", "window_centre", "window_width"),
    )
    return [
        f"{f}: {getattr(old, f)!r} -> {getattr(new, f)!r}"
        for f in fields
        if getattr(old, f) != getattr(new, f)
    ]


class ServingVersions:
    """The current version, the previous one, and per-version counters."""

    def __init__(self, backend: Backend, initial: str = "") -> None:
        self.backend = backend
        self.version: str | None = initial or None
        self.previous: str | None = None
        self.switched_at: float | None = None
        self.in_flight: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # finished since the last switch
        self.errors: Counter[str] = Counter()  # model errors since the last switch
        self._specs: dict[str, ModelSpec] = {}

    async def current(self) -> str:
        """The version new requests go to (resolved from Triton the first time if unset)."""
        if self.version is None:
            self.version = await self._newest_ready()
            log.info("serving version %s (the newest ready)", self.version)
        return self.version

    async def _newest_ready(self) -> str:
        ready = [int(v["version"]) for v in await self.backend.versions() if _is_ready(v)]
        if not ready:
            raise NotReady("no version of the model is ready in Triton")
        return str(max(ready))

    async def spec(self, version: str) -> ModelSpec:
        """The ModelSpec Triton serves for ``version`` (read once per version)."""
        if version not in self._specs:
            self._specs[version], _ = await self.backend.model_spec(version)
        return self._specs[version]

    @asynccontextmanager
    async def use(self) -> AsyncIterator[tuple[str, ModelSpec]]:
        """One request's version and spec; counted in flight until it has been answered."""
        version = await self.current()
        self.in_flight[version] += 1
        try:
            yield version, await self.spec(version)
        except MODEL_ERRORS as e:
            self.errors[version] += 1
            if isinstance(e, NotReady):  # Triton went away: read the spec again when it is back
                self._specs.pop(version, None)
            raise
        finally:
            self.in_flight[version] -= 1
            self.requests[version] += 1

    async def switch(self, version: str) -> None:
        """Send new requests to ``version`` once it is ready and takes the same input.

        Raises:
            VersionConflict: not ready in Triton, or its tensors or classes differ.
        """
        current = await self.current()
        if not await self.backend.ready(version):
            raise VersionConflict(f"version {version} is not ready in Triton; load it first")
        new_spec, _ = await self.backend.model_spec(version)
        changes = contract_differences(await self.spec(current), new_spec)
        if changes:
            raise VersionConflict(
                f"version {version} does not take the same input as {current}: "
                + "; ".join(changes)
            )
        self._specs[version] = new_spec
        if version != current:
            self.previous = current
        self.version = version  # the switch: one assignment, no await in between
        self.switched_at = time.time()
        self.requests.clear()
        self.errors.clear()
        log.info("switched serving version %s -> %s", current, version)

    def status(self) -> dict[str, Any]:
        """What the admin endpoint reports."""
        finished = sum(self.requests.values())
        errors = sum(self.errors.values())
        return {
            "version": self.version,
            "previous_version": self.previous,
            "switched_at": self.switched_at,
            "in_flight": {v: n for v, n in self.in_flight.items() if n},
            "since_switch": {
                "requests": finished,
                "errors": errors,
                "error_rate": errors / finished if finished else 0.0,
                "by_version": {
                    v: {"requests": self.requests[v], "errors": self.errors[v]}
                    for v in sorted(set(self.requests) | set(self.errors))
                },
            },
        }


def _is_ready(entry: dict[str, Any]) -> bool:
    return entry.get("state") == "READY" and str(entry.get("version", "")).isdigit()
