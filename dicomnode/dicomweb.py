"""A DICOMweb client (PS3.18) of the three services the node uses, over httpx:

- STOW-RS (``store``): the outbox's results to an archive, one request per batch, an
  ``Outcome`` per file in the terms of the C-STORE sender (``dicomnode.storescu``), so the
  outbox settles both the same way;
- QIDO-RS (``search_series``): CT series of an archive, for pull mode;
- WADO-RS (``retrieve_series``): a series' instances as Part 10 files, for pull mode.

Every call is bounded by ``timeout_s`` (connect, each read). An answer that is not what the
standard says (JSON that is not a list of DICOM JSON objects, a multipart that does not parse)
raises ``DicomWebError`` with what was wrong; nothing of it is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from dicomnode.errors import DicomNodeError
from dicomnode.multipart import DICOM, MultipartError, Part, RelatedParser, encode_related
from dicomnode.multipart import parse_content_type as parse_related_type
from dicomnode.storescu import REFUSED, STORED, TRANSIENT, Outcome, classify

log = logging.getLogger(__name__)

#: HTTP statuses a later try may not get (the archive busy, down, or its key not set yet).
TRANSIENT_HTTP = (401, 403, 408, 425, 429, 500, 502, 503, 504)
REFERENCED, FAILED = "00081199", "00081198"
SOP_INSTANCE, FAILURE_REASON = "00081155", "00081197"


class DicomWebError(DicomNodeError):
    """A DICOMweb server did not answer, or answered what the standard does not allow."""


def is_url(destination: str) -> bool:
    """A DICOMweb root (``http(s)://...``), as opposed to a DIMSE ``AET@host:port``."""
    return destination.startswith(("http://", "https://"))


def tag_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


class DicomWebClient:
    """One DICOMweb server.

    Args:
        base_url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        token: sent as ``Authorization: Bearer`` when given.
        timeout_s: connect and read timeout of every request.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- STOW-RS ---------------------------------------------------------------------------

    def store(self, files: Sequence[Path], sop_uids: Sequence[str]) -> list[Outcome]:
        """STOW-RS of ``files`` (whose SOP Instance UIDs are ``sop_uids``) in one request;
        an outcome per file."""
        try:
            content_type, body = encode_related(p.read_bytes() for p in files)
        except OSError as e:
            return [Outcome(REFUSED, None, f"outbox payload unreadable: {e}")] * len(files)
        where = f"{self.base_url}/studies"
        try:
            r = self._http.post(
                where,
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
        except httpx.HTTPError as e:
            return [Outcome(TRANSIENT, None, f"STOW-RS to {where}: {type(e).__name__}")] * len(
                files
            )
        return stow_outcomes(r.status_code, r.content, sop_uids, where)

    # -- QIDO-RS and WADO-RS ---------------------------------------------------------------

    def search_series(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS ``/series`` with ``query``; the DICOM JSON objects found.

        Raises:
            DicomWebError: no answer, an error status, or not a JSON array of objects.
        """
        url = f"{self.base_url}/series"
        try:
            r = self._http.get(url, params=query, headers={"Accept": "application/dicom+json"})
        except httpx.HTTPError as e:
            raise DicomWebError(f"QIDO-RS {url}: {type(e).__name__}: {e}") from e
        if r.status_code == 204:
            return []
        if r.status_code != 200:
            raise DicomWebError(f"QIDO-RS {url}: HTTP {r.status_code}")
        try:
            found = json.loads(r.content)
        except ValueError as e:
            raise DicomWebError(f"QIDO-RS {url}: the answer is not JSON ({e})") from e
        if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
            raise DicomWebError(f"QIDO-RS {url}: the answer is not a JSON array of objects")
        return found

    def retrieve_series(
        self, study_uid: str, series_uid: str, max_instance_bytes: int
    ) -> Iterator[Part]:
        """WADO-RS of one series: its instances as Part 10 files, streamed part by part.

        Raises:
            DicomWebError: no answer, an error status, or a body that is not multipart/related.
        """
        url = f"{self.base_url}/studies/{study_uid}/series/{series_uid}"
        accept = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
        ended: list[Part] = []
        try:
            with self._http.stream("GET", url, headers={"Accept": accept}) as r:
                if r.status_code != 200:
                    raise DicomWebError(f"WADO-RS of a series: HTTP {r.status_code}")
                content_type = parse_related_type(r.headers.get("content-type"))
                parser = RelatedParser(content_type.boundary, ended.append, max_instance_bytes)
                for chunk in r.iter_bytes():
                    parser.write(chunk)
                    while ended:
                        yield ended.pop(0)
                parser.close()
        except httpx.HTTPError as e:
            raise DicomWebError(f"WADO-RS of a series: {type(e).__name__}: {e}") from e
        except MultipartError as e:
            raise DicomWebError(f"WADO-RS of a series: {e}") from e
        yield from ended


def stow_outcomes(status: int, body: bytes, sop_uids: Sequence[str], where: str) -> list[Outcome]:
    """The outcome of each instance of a STOW-RS request answered ``status`` with ``body``
    (PS3.18 10.5.3: 200 all stored; 202 some; 409 none; the response's FailedSOPSequence
    gives each failure's reason)."""
    if status == 200:
        return [Outcome(STORED, None)] * len(sop_uids)
    if status in TRANSIENT_HTTP or status >= 500:
        return [Outcome(TRANSIENT, None, f"STOW-RS to {where}: HTTP {status}")] * len(sop_uids)
    if status not in (202, 409):
        return [Outcome(REFUSED, None, f"STOW-RS to {where}: HTTP {status}")] * len(sop_uids)
    stored: set[str] = set()
    failed: dict[str, int] = {}
    try:
        answer = json.loads(body)
        for item in answer.get(REFERENCED, {}).get("Value", []):
            stored.add(str(tag_value(item, SOP_INSTANCE)))
        for item in answer.get(FAILED, {}).get("Value", []):
            failed[str(tag_value(item, SOP_INSTANCE))] = int(tag_value(item, FAILURE_REASON) or 0)
    except (ValueError, AttributeError, TypeError):
        log.warning("STOW-RS to %s: HTTP %d without a readable response", where, status)
    outcomes = []
    for uid in sop_uids:
        if uid in failed:
            outcome = classify(failed[uid]) if failed[uid] else Outcome(REFUSED, None, "failed")
            outcomes.append(Outcome(outcome.kind, failed[uid], f"STOW-RS: {outcome.reason}"))
        elif uid in stored or (status == 202 and not failed):
            outcomes.append(Outcome(STORED, None))
        else:
            outcomes.append(Outcome(REFUSED, None, f"STOW-RS to {where}: HTTP {status}"))
    return outcomes
