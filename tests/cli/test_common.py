"""Errors shared by every command: one literal message, no traceback."""

from __future__ import annotations

from tests.cli_helpers import covidct


def test_error_messages_are_printed_literally() -> None:
    """Rich must not read a message as markup or emoji codes (":end:" is one)."""
    result = covidct("bench", "triton", "--concurrency", "0")
    assert result.returncode == 2
    assert "expected START:END:xFACTOR" in result.stderr
    result = covidct("bench", "all", "--only", "[bold]x")
    assert result.returncode == 2 and "['[bold]x']" in result.stderr
