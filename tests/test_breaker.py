"""The circuit breaker's states, driven by a clock the tests move."""

from __future__ import annotations

from features.serving.breaker import BreakerState, CircuitBreaker


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker("redis", failure_threshold=3, reset_timeout_s=1.0, clock=clock)


def test_opens_after_consecutive_failures_only() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.record_failure("x")
    b.record_failure("x")
    b.record_success()
    b.record_failure("x")
    b.record_failure("x")
    assert (b.state, b.allow()) == (BreakerState.CLOSED, True)
    b.record_failure("refused")
    assert (b.state, b.allow(), b.reason) == (BreakerState.OPEN, False, "refused")


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.trip("pool exhausted")
    clock.now += 0.999
    assert not b.allow()
    clock.now += 0.002
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()
    assert not b.allow()
    b.record_success()
    assert (b.state, b.allow()) == (BreakerState.CLOSED, True)


def test_a_failed_probe_opens_again_for_a_full_timeout() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.trip("x")
    clock.now += 1.5
    assert b.allow()
    b.record_failure("still down")
    assert b.state is BreakerState.OPEN
    clock.now += 0.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()


def test_a_probe_that_never_reports_back_expires() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.trip("x")
    clock.now += 1.0
    assert b.allow()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.6
    assert b.allow()
