"""A bounded, paced HTTP load on /v1/predict with real CT slices, recording every answer: the
client of the zero-downtime tests (redeploy against covidct serve and against the composed
stack)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from bench.corpus import real_data_dir, real_pngs


class Load:
    """4 client threads, paced and bounded: (start, end, status, version) per request.

    The bound (at most 20 requests/s, so 6000 last 5 minutes) must outlast a redeploy on a
    loaded 2-core machine: 1500 ran out before the switch once, leaving no answer from the
    new version to check.
    """

    def __init__(self, url: str, max_requests: int = 6000, pause_s: float = 0.2) -> None:
        self.url, self.max_requests, self.pause_s = url, max_requests, pause_s
        self.slices = [p.read_bytes() for p in real_pngs(real_data_dir())[:8]]
        self.records: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(4)]

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            n = i
            while not self.stop.is_set() and len(self.records) < self.max_requests:
                body = self.slices[n % len(self.slices)]
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/predict", content=body)
                    status = r.status_code
                    version = r.json().get("model", {}).get("version", "") if status == 200 else ""
                except httpx.HTTPError:
                    status, version = 0, ""
                self.records.append((t0, time.perf_counter(), status, version))
                n += 4
                time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def p99(records: list[tuple[float, float, int, str]]) -> float:
    return float(np.percentile([(e - s) * 1000 for s, e, _, _ in records], 99)) if records else 0.0


def assert_one_clean_switch(
    records: list[tuple[float, float, int, str]],
    finished: float,
    old: str,
    new: str,
    overlap_s: float = 0.0,
) -> float:
    """Every request answered 200, the load outlived the switch (``finished``), and the
    version changed once: only ``old`` before the first ``new`` answer, only ``new`` for
    requests started ``overlap_s`` after it (several gateway processes switch within a
    heartbeat of each other: gateway/fleet.py). Returns the overlap seen: how long after the
    first ``new`` answer an ``old`` one was still started (0 if none)."""
    failed = [r for r in records if r[2] != 200]
    assert records and not failed, failed[:5]
    assert max(r[0] for r in records) > finished, "the load ended before the redeploy did"
    assert {r[3] for r in records} == {old, new}
    first_new = min(r for r in records if r[3] == new)
    late_old = [r[0] - first_new[1] for r in records if r[3] == old and r[0] > first_new[1]]
    overlap = max(late_old, default=0.0)
    assert overlap <= overlap_s, f"the old version answered {overlap:.2f} s after the switch"
    assert all(r[3] == old for r in records if r[1] < first_new[0])
    return overlap
