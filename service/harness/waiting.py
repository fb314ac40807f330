"""Waiting for a condition: poll it, with a bounded deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 5.0, poll_s: float = 0.005
) -> None:
    """Poll ``predicate`` until it holds; ``AssertionError`` if it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(poll_s)
