"""One served version for every gateway process: a serving record and heartbeats in a folder.

With ``COVIDCT_SERVING_DIR`` set, every gateway process of a deployment (uvicorn workers of
``covidct serve --workers M``, gateway pods sharing a volume) shares one folder:

- ``serving.json``, the **serving record**: the version new requests go to, with an id per
  switch. It is the one truth; it is only ever replaced whole (write, then rename).
- ``gateways/<host>-<pid>.json``, one **heartbeat** per process, rewritten every
  ``HEARTBEAT_S``: the record id it has applied (or refused, and why), its requests in flight
  per version and its counts since its switch. A heartbeat older than ``STALE_S`` is a process
  that is gone: it is left out (and removed after a minute).

Every process follows the record: when its id changes, the process switches
(``ServingVersions.switch``: ready in Triton, same input) and says so in its heartbeat; one
that cannot keeps serving what it served and reports the refusal. The admin switch
(``POST /admin/v1/serving``), whichever process answers it, checks the version itself, writes
the record, and waits until every live process has applied it; when one refuses or does not
answer in ``PUBLISH_TIMEOUT_S``, it writes the previous version back (every process follows
again) and answers 409 naming it. The admin status sums every live heartbeat, so a redeploy
that talks to one gateway address drains and watches all of them.

Each request still reads its process's version once, so it is served wholly by one version.
Without the setting a process decides alone (one worker), as before.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from gateway.errors import GatewayError, VersionConflict
from gateway.versions import ServingVersions

log = logging.getLogger(__name__)

RECORD = "serving.json"
HEARTBEATS = "gateways"
#: Seconds between two heartbeats (and two reads of the record) of one process.
HEARTBEAT_S = 0.25
#: A heartbeat older than this is a process that is gone.
STALE_S = 5.0
#: Heartbeats this old are removed.
FORGET_S = 60.0
#: How long a switch waits for every live process to apply it (more than STALE_S, so a process
#: killed just before the switch drops out instead of failing it).
PUBLISH_TIMEOUT_S = 10.0


def _replace_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as ``path`` in one rename: readers see the old file or the new one.
    Not synced: a heartbeat lost in a crash is a process that is gone anyway; the record is
    rewritten by the next switch."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SharedServing:
    """This process's part in the shared serving folder (see the module docstring)."""

    def __init__(self, folder: Path, serving: ServingVersions, ident: str | None = None) -> None:
        self.folder, self.serving = folder, serving
        self.ident = ident or f"{socket.gethostname()}-{os.getpid()}"
        self.beats = folder / HEARTBEATS
        self.applied: str | None = None  # id of the record this process follows
        self.refused: dict[str, str] | None = None  # {"id", "reason"} of a record it could not

    # --- the record --------------------------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        data = _read_json(self.folder / RECORD)
        return data if data and str(data.get("version", "")).isdigit() else None

    def _write_record(self, version: str, previous: str | None) -> dict[str, Any]:
        record = {
            "id": uuid.uuid4().hex[:12],
            "version": version,
            "previous": previous,
            "switched_at": time.time(),
            "by": self.ident,
        }
        _replace_json(self.folder / RECORD, record)
        return record

    async def start(self) -> None:
        """Serve the record's version from the start (it overrides COVIDCT_MODEL_VERSION)."""
        await anyio.to_thread.run_sync(self._mkdirs)
        record = await anyio.to_thread.run_sync(self.record)
        if record is not None:
            self.serving.version = record["version"]
            self.serving.previous = record.get("previous")
            self.applied = record["id"]
            log.info("serving version %s from the serving record", record["version"])
        await self.beat()

    def _mkdirs(self) -> None:
        self.beats.mkdir(parents=True, exist_ok=True)

    async def follow(self) -> None:
        """Apply a new record (switch, or note the refusal); then write the heartbeat."""
        record = await anyio.to_thread.run_sync(self.record)
        if record is None and self.serving.version is not None:
            # the first process to know its version writes the first record, so a process
            # started later (during a redeploy, two versions ready) serves the same one
            record = await anyio.to_thread.run_sync(self._write_record, self.serving.version, None)
            self.applied = record["id"]
        if record is not None and record["id"] not in (
            self.applied,
            (self.refused or {}).get("id"),
        ):
            try:
                await self.serving.switch(record["version"])
            except GatewayError as e:
                self.refused = {"id": record["id"], "reason": str(e)}
                log.error("cannot follow the serving record to %s: %s", record["version"], e)
            else:
                self.applied, self.refused = record["id"], None
        await self.beat()

    async def run(self) -> None:
        """Follow the record and beat until cancelled; then remove this process's heartbeat."""
        try:
            while True:
                await anyio.sleep(HEARTBEAT_S)
                try:
                    await self.follow()
                except OSError as e:  # a shared volume can hiccup: the next beat tries again
                    log.warning("serving folder %s: %s", self.folder, e)
        finally:
            (self.beats / f"{self.ident}.json").unlink(missing_ok=True)

    # --- heartbeats --------------------------------------------------------------------------

    def _heartbeat(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "time": time.time(),
            "applied": self.applied,
            "refused": self.refused,
            **self.serving.status(),
        }

    async def beat(self) -> None:
        beat = self._heartbeat()
        await anyio.to_thread.run_sync(_replace_json, self.beats / f"{self.ident}.json", beat)

    def live(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live process's heartbeat, this one's (``mine``, taken on the event loop that
        changes its counters) fresh from memory. Reads files: run it in a thread."""
        now, found = time.time(), [mine]
        for path in self._beat_files():
            beat = _read_json(path)
            if beat is None or beat.get("id") == self.ident:
                continue
            age = now - float(beat.get("time", 0))
            if age > FORGET_S:
                path.unlink(missing_ok=True)
            elif age <= STALE_S:
                found.append(beat)
        return found

    def _beat_files(self) -> Iterator[Path]:
        try:
            yield from self.beats.glob("*.json")
        except OSError:
            return

    # --- the switch and the summed status ------------------------------------------------------

    async def publish(self, version: str) -> None:
        """Switch every live process to ``version``, or none (see the module docstring).

        Raises:
            VersionConflict: this process cannot serve it, or another one refused or did not
                answer (then every process is back on the previous version).
        """
        old = await self.serving.current()
        await self.serving.switch(version)  # checks ready + same input; raises before any write
        record = await anyio.to_thread.run_sync(self._write_record, version, old)
        self.applied, self.refused = record["id"], None
        await self.beat()
        try:
            await self._wait_applied(record["id"])
        except VersionConflict:
            log.error("switch to %s undone: not every gateway applied it", version)
            await self.serving.switch(old)
            back = await anyio.to_thread.run_sync(self._write_record, old, version)
            self.applied = back["id"]
            await self.beat()
            raise

    async def _wait_applied(self, record_id: str) -> None:
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while True:
            beats = await anyio.to_thread.run_sync(self.live, self._heartbeat())
            for beat in beats:
                refused = beat.get("refused") or {}
                if refused.get("id") == record_id:
                    raise VersionConflict(f"gateway {beat['id']} refused: {refused['reason']}")
            pending = [b["id"] for b in beats if b.get("applied") != record_id]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise VersionConflict(
                    f"gateways {', '.join(pending)} did not switch within {PUBLISH_TIMEOUT_S:g} s"
                )
            await anyio.sleep(HEARTBEAT_S / 2)

    async def summed_status(self) -> dict[str, Any]:
        """``status`` with the files read off the event loop."""
        return await anyio.to_thread.run_sync(self.status, self._heartbeat())

    def status(self, mine: dict[str, Any] | None = None) -> dict[str, Any]:
        """The admin status summed over every live process, with one line per process
        (``mine``: this process's heartbeat, taken now when not given)."""
        own = mine or self._heartbeat()
        beats = self.live(own)
        record = self.record() or {}
        in_flight: dict[str, int] = {}
        by_version: dict[str, dict[str, int]] = {}
        for beat in beats:
            for v, n in beat.get("in_flight", {}).items():
                in_flight[v] = in_flight.get(v, 0) + int(n)
            for v, counts in beat.get("since_switch", {}).get("by_version", {}).items():
                sums = by_version.setdefault(v, {"requests": 0, "errors": 0})
                sums["requests"] += int(counts.get("requests", 0))
                sums["errors"] += int(counts.get("errors", 0))
        requests = sum(c["requests"] for c in by_version.values())
        errors = sum(c["errors"] for c in by_version.values())
        return {
            "version": record.get("version", own["version"]),
            "previous_version": record.get("previous", own["previous_version"]),
            "switched_at": record.get("switched_at", own["switched_at"]),
            "in_flight": {v: n for v, n in in_flight.items() if n},
            "since_switch": {
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests if requests else 0.0,
                "by_version": dict(sorted(by_version.items())),
            },
            "gateways": [
                {
                    "id": b["id"],
                    "version": b.get("version"),
                    "following_record": b.get("applied") == record.get("id"),
                    "refused": (b.get("refused") or {}).get("reason"),
                    "in_flight": sum(int(n) for n in b.get("in_flight", {}).values()),
                }
                for b in beats
            ],
        }
