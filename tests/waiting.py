"""Waiting in tests for something another thread or process does: ``poll`` (its value) and
``wait_for`` (an AssertionError when it never happens); ``http_status``, what is most often
polled."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def poll(condition: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """``condition()``'s first truthy value within ``timeout`` seconds, polled every ``every``;
    after that its last value (falsy), so ``assert poll(...), message`` reads as it fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    return condition()


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    """``condition()``'s first truthy value, polled; AssertionError after ``timeout``."""
    if value := poll(condition, timeout, every):
        return value
    raise AssertionError(f"not true within {timeout} s: {condition}")


def http_status(url: str) -> int:
    """The status of a GET of ``url``; 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
