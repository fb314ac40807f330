"""A circuit breaker per store: stop asking a store that keeps failing, probe it again later.

States: ``closed`` (calls go through; consecutive failures are counted),
``open`` (calls are skipped at once until ``reset_timeout_s`` has passed),
``half_open`` (one probe call goes through; its success closes the breaker,
its failure opens it again).  ``trip`` opens it directly, which the Redis
tier uses when its connection pool is nearly exhausted, so requests are
shed instead of queued.

Every call that ``allow`` lets through carries a ``Permit`` and reports back
with it.  Only the probe's report decides an open breaker: calls let through
before it opened (still in flight when it tripped) change nothing when they
end, whether they succeed or fail, so a pool-saturation trip is not undone by
the very reads that filled the pool, and a store that fails part of the time
does not flap between open and closed with every answer.

Why not pybreaker or purgatory: pybreaker awaits coroutines only through
Tornado, purgatory looks a breaker up through a message bus on every call
(too slow for a path measured in microseconds), and neither takes an
injectable clock, which the tests use to move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker", "Permit"]


class BreakerState(StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """What ``allow`` hands a call it lets through; the call reports back with it."""

    trips: int
    """How many times the breaker had opened when the call was let through."""
    probe: bool
    """Whether the call is the half-open probe."""


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
        self._trips = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None
        self.reason = ""
        """Why the breaker last opened, a short category (``timeout``, ``deadline``, ...) that
        the status page shows to anyone: never a host, a port or a store's error text."""
        self.last_failure = ""
        """The last failure any call reported, whatever the state."""
        self.last_failure_at: float | None = None
        """When (``clock`` time) ``last_failure`` was reported."""
        self.last_success_at: float | None = None
        """When (``clock`` time) a call last reported success."""

    @property
    def failing(self) -> bool:
        """Whether the last call to report back failed (no success since the last failure)."""
        if self.last_failure_at is None:
            return False
        return self.last_success_at is None or self.last_failure_at >= self.last_success_at

    @property
    def last_failure_age_s(self) -> float | None:
        """Seconds since ``last_failure`` was reported, or ``None``."""
        return None if self.last_failure_at is None else self._clock() - self.last_failure_at

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker turns half-open once its timeout has passed."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._reset_timeout_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> Permit | None:
        """A permit if a call may go to the store now, else ``None``.

        A half-open breaker lets one probe through at a time.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(self._trips, probe=False)
        if state is BreakerState.OPEN or self._probe_in_flight():
            return None
        self._probe_started = self._clock()
        return Permit(self._trips, probe=True)

    def _probe_in_flight(self) -> bool:
        # A probe that never reported back (its caller was cancelled) expires like an open state.
        return (
            self._probe_started is not None
            and self._clock() - self._probe_started < self._reset_timeout_s
        )

    def _current(self, permit: Permit) -> bool:
        """Whether ``permit`` may still move the breaker: let through since the last trip,
        and, while the breaker is open, the probe itself."""
        if permit.trips != self._trips:
            return False
        return self._opened_at is None or (permit.probe and self._probe_started is not None)

    def record_success(self, permit: Permit) -> None:
        """The call ``permit`` let through was answered: reset the count, or close after a probe."""
        self.last_success_at = self._clock()
        if not self._current(permit):
            return
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self, permit: Permit, reason: str) -> None:
        """The call failed: count it; open at the threshold, or again after a failed probe."""
        self.last_failure = reason
        self.last_failure_at = self._clock()
        if not self._current(permit):
            return
        self._failures += 1
        if permit.probe or self._failures >= self._failure_threshold:
            self.trip(reason)

    def trip(self, reason: str) -> None:
        """Open the breaker now, for ``reset_timeout_s``; calls in flight no longer count."""
        self._opened_at = self._clock()
        self._probe_started = None
        self._trips += 1
        self.reason = reason
