"""Deterministic UIDs of the node's results, so a resend or a reprocessing files the same objects.

Every result UID is a name-based UUID (version 5, RFC 4122 / ISO/IEC 9834-8) written as a
``2.25.`` UID (PS3.5 B.2): no organisation root is needed and two nodes can never collide
by accident. The name is the JSON list ``[source SeriesInstanceUID, model version, role]``
hashed under this module's fixed namespace, so the same inputs give the same UID and any
changed input gives another. JSON keeps the parts apart (``["1.2", "3"]`` is not
``["1.23", ""]``), which a plain concatenation would not.

Roles: ``sr-series`` and ``sr`` (the report's series and instance), ``sc-series`` and
``sc-instance-<i>`` (the Secondary Captures, ``i`` counting from 1), ``tracking-series`` and
``tracking-<SOP Instance UID>`` (the report's measurement groups). The algorithm's Device UID
comes from the ModelSpec fingerprint alone: the same model is the same device in every
report.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

#: The namespace of every result UID. Fixed forever: changing it renames every result.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:covidct:dicomnode:results")


def _uid(*parts: str) -> str:
    """``2.25.<decimal of the UUID v5 of the JSON list of parts>``."""
    name = json.dumps(list(parts), separators=(",", ":"))
    return f"2.25.{uuid.uuid5(NAMESPACE, name).int}"


def result_uid(source_series_uid: str, model_version: str, role: str) -> str:
    """The UID of one result object (or series) of one source series and model version.

    Args:
        source_series_uid: the source series' SeriesInstanceUID.
        model_version: the model version that answered the series.
        role: what the UID names (``sr``, ``sr-series``, ``sc-series``, ``sc-instance-1``...).

    Returns:
        A ``2.25.`` UID of at most 44 characters.
    """
    return _uid("result", source_series_uid, model_version, role)


def device_uid(spec_fingerprint: str) -> str:
    """The algorithm's Device UID (observer device, Contributing Equipment), from its
    ModelSpec fingerprint."""
    return _uid("device", spec_fingerprint)


@dataclass(frozen=True)
class ResultUids:
    """Every UID the results of one series and model version carry.

    Attributes:
        source_series_uid: the source series' SeriesInstanceUID.
        model_version: the model version that answered the series.
    """

    source_series_uid: str
    model_version: str

    def _role(self, role: str) -> str:
        return result_uid(self.source_series_uid, self.model_version, role)

    @property
    def sr_series(self) -> str:
        """SeriesInstanceUID of the report's series."""
        return self._role("sr-series")

    @property
    def sr_instance(self) -> str:
        """SOPInstanceUID of the report."""
        return self._role("sr")

    @property
    def sc_series(self) -> str:
        """SeriesInstanceUID of the Secondary Captures' series."""
        return self._role("sc-series")

    def sc_instance(self, index: int) -> str:
        """SOPInstanceUID of the ``index``-th Secondary Capture (counting from 1)."""
        if index < 1:
            raise ValueError(f"Secondary Capture indices count from 1, got {index}")
        return self._role(f"sc-instance-{index}")

    def tracking(self, what: str) -> str:
        """Tracking UID of a measurement group: ``series`` or a source SOP Instance UID."""
        return self._role(f"tracking-{what}")
