"""The in-process cache: TTL with a moved clock, LRU bound, off switch; single-flight."""

from __future__ import annotations

import asyncio

import pytest

from features.serving.cache import FeatureCache, SingleFlight
from tests.support.clock import ManualClock


def test_entries_expire_after_ttl() -> None:
    clock = ManualClock(1000.0)
    cache: FeatureCache[str] = FeatureCache(ttl_s=5.0, maxsize=10, timer=clock)
    cache.put("k", "v")
    clock.now += 4.999
    assert cache.get("k") == "v"
    clock.now += 0.002
    assert cache.get("k") is None


def test_least_recently_used_entry_goes_first_when_full() -> None:
    cache: FeatureCache[int] = FeatureCache(ttl_s=60.0, maxsize=2, timer=ManualClock(1000.0))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


@pytest.mark.parametrize(("ttl_s", "maxsize"), [(0.0, 10), (5.0, 0)])
def test_zero_ttl_or_size_turns_the_cache_off(ttl_s: float, maxsize: int) -> None:
    cache: FeatureCache[int] = FeatureCache(ttl_s=ttl_s, maxsize=maxsize)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_single_flight_hands_the_leaders_value_to_waiters() -> None:
    async def scenario() -> tuple[int, int, int]:
        flights: SingleFlight[int] = SingleFlight()
        assert flights.join("k") is None
        flights.lead("k")
        waiter = flights.join("k")
        assert waiter is not None
        assert flights.join("k") is waiter
        flights.settle("k", 42)
        after = len(flights)
        return await waiter, after, int(flights.join("k") is None)

    assert asyncio.run(scenario()) == (42, 0, 1)


def test_discard_drops_one_entry() -> None:
    cache: FeatureCache[int] = FeatureCache(ttl_s=60.0, maxsize=10, timer=ManualClock(1000.0))
    cache.put("a", 1)
    cache.put("b", 2)
    cache.discard("a")
    cache.discard("missing")
    assert (cache.get("a"), cache.get("b")) == (None, 2)
