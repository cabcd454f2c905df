"""The one root of every error this project raises on purpose.

Each package keeps its own error class (``PreprocessingError``, ``ExportError``,
``DeployError``, the gateway's ``GatewayError`` tree, ...) and derives it from
``CovidctError``, so a caller that only needs "our failure, with a message for a person"
catches one type: the command line turns it into one message and exit code 2
(``cli.main``). Errors keep their built-in base where callers relied on it (``ValueError``
for bad specs and configs, ``RuntimeError`` for failed steps).

This module imports nothing: the CPU Triton image carries it beside ``serving``.
"""

from __future__ import annotations


class CovidctError(Exception):
    """A failure this project reports to a person: the message says what and why.

    Attributes:
        exit_code: what the command line exits with when this error ends a command.
    """

    exit_code: int = 2
