"""A clock that moves only when a test moves it, for code that takes its clock as a callable."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Seconds that change only when a test sets ``now``; called like ``time.monotonic``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
