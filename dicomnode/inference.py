"""The gateway client: one CT series in, one ``SeriesVerdict`` out, all by one model version.

1. ``POST /v1/predict/study`` with every slice as one multipart part, named by its index in
   the series (``00000.dcm``, ...): the names are keys this module controls, so each slice
   result maps back to its source SOP Instance UID, and no UID reaches the gateway's logs
   outside the files themselves. Multipart rather than a zip: the files go out as they are,
   read from the spool while the body streams (one open file at a time), with no archive to
   build. The answer holds the per-slice probabilities, the summary (rule, label,
   probabilities) and the model name and version.
2. ``GET /v1/models``: the served version's ModelSpec, whose ``fingerprint()`` names it.
3. ``POST /v1/predict?heatmap=true`` for each of the ``top_k`` most suspicious slices.

The most suspicious slices are those with the highest probability of the series label when
the series label is a finding (not the first class, ``Normal`` in the COVIDx-CT order), and,
for a series labelled ``Normal``, those with the lowest probability of ``Normal`` (the most
probability on any finding): the slices a reader would look at first either way.

If the model version changes between the calls (a redeploy while the series ran) the whole
series is asked again once; a second change fails. Every failure is an ``InferenceError``
whose ``retryable`` says whether asking again later can help (gateway down, timeouts, 5xx,
429, 408) or not (the series or the request is at fault: other 4xx).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pydicom

from covidct.config import ModelSpec, SpecError
from dicomnode.errors import DicomNodeError
from dicomnode.verdict import ModelIdentity, SeriesVerdict, SliceVerdict

log = logging.getLogger(__name__)

#: Statuses worth asking again later: the gateway is busy, starting, or lost Triton.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 16


class InferenceError(DicomNodeError):
    """The gateway gave no usable answer for the series.

    Attributes:
        retryable: True when the same request may succeed later (the gateway is down, busy
            or timed out, or the model version moved twice); False when it never will.
        status: the HTTP status, when the gateway answered one.
    """

    def __init__(self, reason: str, retryable: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.retryable, self.status = retryable, status


class _VersionChanged(DicomNodeError):
    """The served model version moved while the series was asked (internal: retried)."""


class _LazyFile:
    """A file read for a multipart part: opened at the first read and closed at its end, so
    a series of any length streams with one open file at a time. ``tell`` and ``seek`` give
    httpx the length without opening it."""

    def __init__(self, path: Path) -> None:
        self.path, self.size, self.pos = path, path.stat().st_size, 0
        self.file: Any = None

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos += offset
        if self.file is not None:
            self.file.seek(self.pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if self.file is None:
            self.file = self.path.open("rb")
            self.file.seek(self.pos)
        data: bytes = self.file.read(n)
        self.pos += len(data)
        if not data or self.pos >= self.size:
            self.close()
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _identify(files: Sequence[Path]) -> list[tuple[str, str]]:
    """(SOP Instance UID, SOP Class UID) of each file, from its header."""
    ids = []
    for path in files:
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"]
            )
            ids.append((str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as e:
            raise InferenceError(f"series file {path.name} unreadable: {e}", False) from e
    return ids


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON body of a 200, or an InferenceError in the gateway's own words."""
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError as e:
            raise InferenceError(f"{what}: the gateway answered no JSON", True, 200) from e
        if isinstance(body, dict):
            return body
        raise InferenceError(f"{what}: the gateway answered no JSON object", True, 200)
    try:
        detail = str(response.json().get("detail", ""))
    except (ValueError, AttributeError):
        detail = response.text[:200]
    status = response.status_code
    raise InferenceError(
        f"{what}: gateway answered {status}: {detail or response.reason_phrase}",
        status in RETRYABLE_STATUSES,
        status,
    )


def _call(client: httpx.Client, what: str, method: str, url: str, **kw: Any) -> dict[str, Any]:
    try:
        return _answer(client.request(method, url, **kw), what)
    except httpx.TimeoutException as e:
        raise InferenceError(f"{what}: the gateway did not answer in time ({e})", True) from e
    except httpx.TransportError as e:
        raise InferenceError(f"{what}: cannot reach the gateway ({e})", True) from e


def _spec(client: httpx.Client, version: str) -> ModelSpec:
    """The ModelSpec of the served version, which must be ``version``."""
    models = _call(client, "model spec", "GET", "/v1/models")
    if str(models.get("serving_version")) != version:
        raise _VersionChanged(f"{version} -> {models.get('serving_version')}")
    try:
        return ModelSpec.from_dict(models["model_spec"])
    except (KeyError, TypeError, SpecError) as e:
        raise InferenceError(f"model spec: the gateway's spec is unusable: {e}", False) from e


def _suspicious(slices: Sequence[SliceVerdict], label: str, normal: str, k: int) -> list[int]:
    """Indices of the ``k`` most suspicious slices, most suspicious first (module doc)."""
    if label != normal:
        score = [s.probabilities[label] for s in slices]
    else:
        score = [1.0 - s.probabilities[normal] for s in slices]
    # Ties go to the earlier slice, so the choice is the same on every run.
    return sorted(range(len(slices)), key=lambda i: (-score[i], i))[: max(0, k)]


def _heatmap(client: httpx.Client, path: Path, version: str) -> bytes:
    """The heatmap PNG of one slice, made by ``version``."""
    with path.open("rb") as f:
        files = {"file": ("slice.dcm", f, "application/dicom")}
        body = _call(client, "heatmap", "POST", "/v1/predict", params={"heatmap": "true"},
                     files=files)  # fmt: skip
    answered = str(body.get("model", {}).get("version"))
    if answered != version:
        raise _VersionChanged(f"{version} -> {answered}")
    try:
        return base64.b64decode(body["heatmap"], validate=True)
    except (KeyError, TypeError, binascii.Error) as e:
        raise InferenceError("heatmap: the gateway answered no heatmap", False) from e


def _study(client: httpx.Client, files: Sequence[Path]) -> dict[str, Any]:
    parts = [
        ("file", (f"{i:05d}.dcm", _LazyFile(path), "application/dicom"))
        for i, path in enumerate(files)
    ]
    try:
        return _call(client, "series", "POST", "/v1/predict/study", files=parts)
    finally:
        for _, (_, lazy, _) in parts:
            lazy.close()


def _slices(
    results: list[dict[str, Any]], ids: list[tuple[str, str]], spec: ModelSpec, version: str
) -> tuple[list[SliceVerdict], list[int], list[tuple[str, str]]]:
    """The usable slices (and the index of each one's file), and the rejected ones."""
    by_name = {str(r["name"]): r for r in results}
    slices, files, rejected = [], [], []
    for index, (sop_uid, sop_class) in enumerate(ids):
        result = by_name.get(f"{index:05d}.dcm") or {}
        prediction = result.get("prediction")
        if prediction is None:
            error = result.get("error") or {}
            rejected.append((sop_uid, str(error.get("detail", "no answer for this slice"))))
            continue
        if str(prediction["model"]["version"]) != version:
            raise _VersionChanged(f"{version} -> {prediction['model']['version']}")
        probs = {c: float(prediction["probabilities"][c]) for c in spec.class_names}
        slices.append(SliceVerdict(sop_uid, sop_class, probs))
        files.append(index)
    return slices, files, rejected


def _verdict(
    client: httpx.Client, files: Sequence[Path], ids: list[tuple[str, str]], top_k: int
) -> SeriesVerdict:
    """One pass over the series (``_VersionChanged`` when the version moved)."""
    study = _study(client, files)
    try:
        version, name = str(study["model"]["version"]), str(study["model"]["name"])
    except (KeyError, TypeError) as e:
        raise InferenceError(f"series: unexpected answer from the gateway: {e}", False) from e
    spec = _spec(client, version)
    try:
        summary = study["summary"]
        slices, sources, rejected = _slices(study["slices"], ids, spec, version)
        label = str(summary["label"])
        probabilities = {c: float(summary["probabilities"][c]) for c in spec.class_names}
        if label not in spec.class_names or not slices:
            raise ValueError(f"label {label!r} with {len(slices)} usable slices")
    except (KeyError, TypeError, ValueError) as e:
        raise InferenceError(f"series: unexpected answer from the gateway: {e}", False) from e
    suspicious = _suspicious(slices, label, spec.class_names[0], top_k)
    for i in suspicious:
        png = _heatmap(client, files[sources[i]], version)
        slices[i] = replace(slices[i], heatmap_png=png)
    model = ModelIdentity(
        name=name,
        version=version,
        spec_fingerprint=spec.fingerprint(),
        synthetic=bool(study.get("demo", spec.provenance.synthetic)),
        intended_use=str(study.get("intended_use", spec.intended_use())),
    )
    return SeriesVerdict(
        label=label,
        probabilities=probabilities,
        rule=str(summary.get("rule", "")),
        slices=tuple(slices),
        suspicious=tuple(suspicious),
        model=model,
        rejected=tuple(rejected),
    )


def infer_series(
    files: Sequence[Path],
    gateway_url: str,
    api_key: str | None,
    top_k: int,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
) -> SeriesVerdict:
    """The verdict on one series (``files`` in series order) from the gateway.

    Args:
        files: the series' DICOM files, in series order.
        gateway_url: the gateway's base URL.
        api_key: sent as ``X-API-Key`` when set.
        top_k: how many of the most suspicious slices get a heatmap.
        timeout: seconds for each network step (connect, send, each wait for an answer).
        transport: an httpx transport (tests).

    Raises:
        InferenceError: no verdict; ``retryable`` says whether to try again later.
    """
    if not files:
        raise InferenceError("series has no files", False)
    ids = _identify(files)
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(
        base_url=gateway_url, headers=headers, timeout=timeout, transport=transport
    ) as client:
        try:
            verdict = _verdict(client, files, ids, top_k)
        except _VersionChanged as e:
            log.warning("model version changed during the series (%s): asking again", e)
            try:
                verdict = _verdict(client, files, ids, top_k)
            except _VersionChanged as again:
                raise InferenceError(
                    f"model version changed twice during the series ({e}, then {again})", True
                ) from again
    log.info(
        "series inferred by %s version %s: %d slices used, %d rejected",
        verdict.model.name, verdict.model.version, len(verdict.slices), len(verdict.rejected),
    )  # fmt: skip
    return verdict
