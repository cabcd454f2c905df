"""The figures of ``covidct bench pacs`` (bench/pacs.py runs the rounds): one end-to-end
round's parts, the medians and ratios of all rounds, and the BENCHMARKS.md section."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

#: The receivers of a receive round: storescu into the node's SCP and into Orthanc, one STOW-RS
#: request into the node.
ARMS = ("node", "orthanc", "stow")
PULL_INTERVAL_S = 1.0  # pull mode's QIDO-RS poll in the pull rounds
RECEIVE_TARGET_X = 0.8  # the node's receive rate at least this share of Orthanc's
END_TO_END_TARGET_X = 1.3  # node end to end at most this multiple of the gateway's study time


def breakdown(
    record: dict[str, float], timings: dict[str, float], sr_stored: float, stable_s: float
) -> dict[str, float]:
    """The end-to-end seconds of one series and its parts, from the series' record
    (``last_received``, ``completed_at``, ``finished_at``: epoch seconds), the pipeline's
    ``timings`` and the SR's delivery time. The stable wait itself is left out; the watcher's
    delay past it counts as selection. The viewer's copy is written after the results are
    queued, while the outbox sends them: its time is reported, not part of the sum."""
    infer, build, queue = timings["infer_s"], timings["build_s"], timings["queue_s"]
    view = timings.get("view_s", 0.0)
    total = sr_stored - record["last_received"] - stable_s
    processed = record["finished_at"] - record["completed_at"]
    return {
        "end_to_end_s": total,
        "select_s": record["completed_at"] - record["last_received"] - stable_s
        + processed - infer - build - queue - view,
        "infer_s": infer,
        "build_s": build,
        "queue_s": queue,
        "send_s": sr_stored - record["finished_at"] + view,
        "view_s": view,
    }  # fmt: skip


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, range and the values of per-round figures."""
    return {"median": statistics.median(values), "low": min(values), "high": max(values),
            "values": list(values)}  # fmt: skip


def summarise(
    receive: Sequence[dict[str, float]],
    e2e: Sequence[dict[str, float]],
    study: Sequence[float],
    instances: int,
    series: str,
    stable_s: float,
    pull: Sequence[float] = (),
) -> dict[str, Any]:
    """The result: rates and ratios per round, medians, the end-to-end parts and the targets."""
    rates = {a: [instances / r[a] for r in receive] for a in ARMS if a in receive[0]}
    ratio = [n / o for n, o in zip(rates["node"], rates["orthanc"], strict=True)]
    stow_ratio = [s / n for s, n in zip(rates.get("stow", []), rates["node"], strict=False)]
    over = [e["end_to_end_s"] / s for e, s in zip(e2e, study, strict=True)]
    parts = {k: statistics.median(e[k] for e in e2e) for k in e2e[0]}
    return {
        "series": series, "instances": instances, "stable_s": stable_s,
        "receive": {"node_per_s": spread(rates["node"]), "orthanc_per_s": spread(rates["orthanc"]),
                    "ratio": spread(ratio), "target_x": RECEIVE_TARGET_X,
                    **({"stow_per_s": spread(rates["stow"]),
                        "stow_over_c_store": spread(stow_ratio)} if stow_ratio else {})},
        **({"pull": {"latency_s": spread(list(pull)), "interval_s": PULL_INTERVAL_S}}
           if pull else {}),
        "end_to_end": {"node_s": spread([e["end_to_end_s"] for e in e2e]),
                       "gateway_study_s": spread(list(study)), "ratio": spread(over),
                       "parts_s": parts, "rounds": list(e2e), "target_x": END_TO_END_TARGET_X},
    }  # fmt: skip


def pacs_section(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of a result."""
    rec, e2e = r["receive"], r["end_to_end"]
    p = e2e["parts_s"]

    def rng(s: dict[str, Any], f: str) -> str:
        return f"{s['median']:{f}} (range {s['low']:{f}} to {s['high']:{f}})"

    return "\n".join([
        "## DICOM node (`covidct bench pacs`)",
        "",
        f"Series: {r['series']}, {r['instances']} instances, sent by one `storescu -xs +sd +r`.",
        "",
        f"Receive rate, {len(rec['ratio']['values'])} interleaved rounds (order rotated every "
        "round, each receiver fresh each round), medians:",
        "",
        "| receiver | instances/s |",
        "|---|---|",
        f"| the node's SCP (spool) | {rng(rec['node_per_s'], '.1f')} |",
        f"| Orthanc 1.10 | {rng(rec['orthanc_per_s'], '.1f')} |",
        f"| node / Orthanc | {rng(rec['ratio'], '.2f')}x (target >= {rec['target_x']:g}x) |",
        *([f"| the node, one STOW-RS request | {rng(rec['stow_per_s'], '.1f')} |",
           f"| STOW-RS / C-STORE into the node | {rng(rec['stow_over_c_store'], '.2f')}x |"]
          if "stow_per_s" in rec else []),
        "",
        f"End to end, {len(e2e['ratio']['values'])} interleaved rounds: last instance received "
        f"to the SR stored in Orthanc, less the stable wait ({r['stable_s']:g} s here), beside "
        "the gateway's own `POST /v1/predict/study` of the same files:",
        "",
        "| figure | seconds |",
        "|---|---|",
        f"| node, end to end | {rng(e2e['node_s'], '.2f')} |",
        f"| gateway study time | {rng(e2e['gateway_study_s'], '.2f')} |",
        f"| node / gateway | {rng(e2e['ratio'], '.2f')}x (target <= {e2e['target_x']:g}x) |",
        "",
        "Parts of the node's time (medians over rounds, seconds): "
        f"select and order {p['select_s']:.2f} (the watcher past the stable wait, the worker, "
        f"the spool), infer {p['infer_s']:.2f} (study path, model spec, heatmaps), "
        f"build SR and SC {p['build_s']:.2f}, queue in the outbox {p['queue_s']:.2f}, "
        f"send to Orthanc {p['send_s']:.2f}"
        + (f" (the viewer's copy, written meanwhile: {p['view_s']:.2f})" if "view_s" in p else "")
        + ".",
        *(["", f"Pull mode, {len(r['pull']['latency_s']['values'])} rounds: the series stored in "
           "Orthanc, then a fresh node polling it (QIDO-RS every "
           f"{r['pull']['interval_s']:g} s, retrieved once two polls agree, WADO-RS, results "
           "STOWed back): last instance stored in the archive to the SR stored there, "
           f"{rng(r['pull']['latency_s'], '.2f')} s (the node's stable wait of "
           f"{r['stable_s']:g} s included)."] if "pull" in r else []),
    ])  # fmt: skip
