"""The compiled kernels (covidct/_native.c), or None where the Python references run.

Callers read :data:`compiled` at each call, never bind it at import, so that
:func:`python_references` reaches every caller in the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

try:
    from covidct import _native
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None  # type: ignore[assignment]

#: Whether the compiled kernels are built (the gateway logs it; its image requires them).
NATIVE = _native is not None

#: The kernels in use: ``covidct._native``, or None for the Python references.
compiled = _native


@contextlib.contextmanager
def python_references() -> Iterator[None]:
    """Run the Python references instead of the compiled kernels for the length of a block.

    Tests and ``covidct bench capacity`` compare the two. Not for serving: the switch is
    process-wide, every thread sees it.

    Yields:
        Nothing; on exit the kernels in use before are restored.
    """
    global compiled
    kept = compiled
    compiled = None  # type: ignore[assignment]
    try:
        yield
    finally:
        compiled = kept
