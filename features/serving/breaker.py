"""A circuit breaker per store: stop asking a store that keeps failing, probe it again later.

States: ``closed`` (calls go through; consecutive failures are counted),
``open`` (calls are skipped at once until ``reset_timeout_s`` has passed),
``half_open`` (one probe call goes through; its success closes the breaker,
its failure opens it again).  ``trip`` opens it directly, which the Redis
tier uses when its connection pool is nearly exhausted, so requests are
shed instead of queued.

Why not pybreaker or purgatory: pybreaker awaits coroutines only through
Tornado, purgatory looks a breaker up through a message bus on every call
(too slow for a path measured in microseconds), and neither takes an
injectable clock, which the tests use to move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a timed half-open probe."""

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._failure_threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None
        self.reason = ""
        """Why the breaker last opened, a short category (``timeout``, ``deadline``, ...) that
        the status page shows to anyone: never a host, a port or a store's error text."""

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker turns half-open once its timeout has passed."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._reset_timeout_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a call may go to the store now; a half-open breaker lets one probe through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_in_flight():
            return False
        self._probe_started = self._clock()
        return True

    def _probe_in_flight(self) -> bool:
        # A probe that never reported back (its caller was cancelled) expires like an open state.
        return (
            self._probe_started is not None
            and self._clock() - self._probe_started < self._reset_timeout_s
        )

    def record_success(self) -> None:
        """The store answered: close the breaker."""
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self, reason: str) -> None:
        """The store failed: count it, and open the breaker at the threshold or after a probe."""
        self._failures += 1
        if self._probe_started is not None or self._failures >= self._failure_threshold:
            self.trip(reason)

    def trip(self, reason: str) -> None:
        """Open the breaker now, for ``reset_timeout_s``."""
        self._opened_at = self._clock()
        self._probe_started = None
        self.reason = reason
