"""Fixtures of the DICOM node's tests: the real Orthanc as the PACS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.dicomnode.orthanc import Orthanc, running_orthanc


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Starts Orthanc instances on demand: ``orthanc_factory(node_aet="COVIDCT",
    node_port=port)`` registers the node as the modality ``node``; each is stopped at the end
    of the test."""
    with ExitStack() as stack:
        count = 0

        def make(
            node_aet: str | None = None, node_port: int | None = None, **options: Any
        ) -> Orthanc:
            nonlocal count
            count += 1
            root = tmp_path / f"orthanc-{count}"
            return stack.enter_context(running_orthanc(root, node_aet, node_port, **options))

        yield make


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A started Orthanc (AET ``PACS``, no modality registered), stopped after the test."""
    return orthanc_factory()
