"""The circuit breaker's states, driven by a clock the tests move."""

from __future__ import annotations

from features.breaker import BreakerState, CircuitBreaker, Permit
from tests.support.clock import ManualClock


def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker("redis", failure_threshold=3, reset_timeout_s=1.0, clock=clock)


def permit(b: CircuitBreaker) -> Permit:
    granted = b.allow()
    assert granted is not None
    return granted


def test_opens_after_consecutive_failures_only() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    b.record_failure(permit(b), "x")
    b.record_failure(permit(b), "x")
    b.record_success(permit(b))
    b.record_failure(permit(b), "x")
    b.record_failure(permit(b), "x")
    assert b.state is BreakerState.CLOSED
    assert b.allow() is not None
    b.record_failure(permit(b), "refused")
    assert (b.state, b.allow(), b.reason) == (BreakerState.OPEN, None, "refused")


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    b.trip("pool exhausted")
    clock.now += 0.999
    assert b.allow() is None
    clock.now += 0.002
    assert b.state is BreakerState.HALF_OPEN
    probe = b.allow()
    assert probe is not None and probe.probe
    assert b.allow() is None
    b.record_success(probe)
    assert b.state is BreakerState.CLOSED
    assert b.allow() is not None


def test_a_failed_probe_opens_again_for_a_full_timeout() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    b.trip("x")
    clock.now += 1.5
    b.record_failure(permit(b), "still down")
    assert b.state is BreakerState.OPEN
    clock.now += 0.9
    assert b.allow() is None
    clock.now += 0.2
    assert b.allow() is not None


def test_a_probe_that_never_reports_back_expires() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    b.trip("x")
    clock.now += 1.0
    assert b.allow() is not None
    clock.now += 0.5
    assert b.allow() is None
    clock.now += 0.6
    assert b.allow() is not None


def test_calls_in_flight_when_it_tripped_do_not_close_it() -> None:
    """A pool-saturation trip holds: the reads that filled the pool end successfully."""
    clock = ManualClock(100.0)
    b = breaker(clock)
    in_flight = [permit(b) for _ in range(4)]
    b.trip("connection pool over 80 % in use")
    for call in in_flight:
        b.record_success(call)
    assert b.state is BreakerState.OPEN
    assert b.reason == "connection pool over 80 % in use"


def test_calls_in_flight_when_it_tripped_do_not_reopen_it_after_the_probe() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    in_flight = [permit(b) for _ in range(3)]
    b.trip("x")
    clock.now += 1.0
    b.record_success(permit(b))
    for call in in_flight:
        b.record_failure(call, "late")
    assert b.state is BreakerState.CLOSED


def test_under_partial_failure_it_stays_open_until_the_probe_decides() -> None:
    """Half the answers fail: an open breaker must not flap closed with every success."""
    clock = ManualClock(100.0)
    b = breaker(clock)
    in_flight = [permit(b) for _ in range(12)]
    states = []
    for index, call in enumerate(in_flight):
        if index % 2 == 0:
            b.record_failure(call, "BUSY")
        else:
            b.record_success(call)
        states.append(b.state)
    # Alternating answers never reach three failures in a row while closed.
    assert states == [BreakerState.CLOSED] * 12
    more = [permit(b) for _ in range(12)]
    for call in more[:3]:
        b.record_failure(call, "BUSY")
    assert b.state is BreakerState.OPEN
    for index, call in enumerate(more[3:]):
        if index % 2:
            b.record_failure(call, "BUSY")
        else:
            b.record_success(call)
        assert b.state is BreakerState.OPEN
    clock.now += 1.0
    probe = permit(b)
    b.record_failure(probe, "BUSY")
    assert b.state is BreakerState.OPEN
    clock.now += 1.0
    b.record_success(permit(b))
    assert b.state is BreakerState.CLOSED


def test_it_remembers_the_last_failure_and_whether_it_is_still_failing() -> None:
    clock = ManualClock(100.0)
    b = breaker(clock)
    assert (b.failing, b.last_failure_age_s) == (False, None)
    b.record_failure(permit(b), "NOPERM No permissions to access a key")
    clock.now += 2.5
    assert b.failing
    assert (b.last_failure, b.last_failure_age_s) == ("NOPERM No permissions to access a key", 2.5)
    b.record_success(permit(b))
    assert not b.failing
