"""The DICOM node's one error root.

Every failure the node raises on purpose derives from ``DicomNodeError``, itself a
``covidct.errors.CovidctError``, so the command line reports it as one message and exit code 2.
"""

from __future__ import annotations

from covidct.errors import CovidctError


class DicomNodeError(CovidctError):
    """A failure of the DICOM node (settings, spool, network, results), with a message for a
    person."""
