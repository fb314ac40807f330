"""The feature deadline: each profile's budget by default, and where the resolver stops waiting.

The resolver waits for a store until its deadline less some slack (2 ms, at most
a fifth of the deadline), then answers without it.  These tests run the
resolver on an event loop whose clock moves only when the loop would sleep
(``tests.support.virtual_time``), in front of a store that never answers: the
loop jumps straight to the next timer, so the moment the wait ends is exact,
however busy the machine.
"""

from __future__ import annotations

import asyncio

import pytest

from features.breaker import CircuitBreaker
from features.budgets import ProfileName
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver, Tier
from features.settings import Settings
from features.sources import Degraded, Source
from service.harness.example import EXAMPLE_REGISTRY
from tests.support.virtual_time import PromptStore, SilentStore, VirtualTimeLoop

FEATURES = EXAMPLE_REGISTRY.group("user", "features")

BUDGET_MS: dict[ProfileName, int] = {
    "payments": 10,
    "recommendation": 20,
    "search": 30,
    "ads": 3,
    "personalization": 40,
}
"""The usual feature budget of each use case, copied here by hand (not read from the code)."""


def waited_s(deadline_s: float) -> tuple[float, Source, Degraded | None]:
    """How long a resolver with ``deadline_s`` waited for a silent store, and its answer."""
    store = SilentStore()
    breaker = CircuitBreaker("redis", 5, 1.0)
    cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
    resolver = Resolver(EXAMPLE_REGISTRY, [Tier(Source.REDIS, store, breaker)], cache, deadline_s)
    selection = ((FEATURES, FEATURES.feature_names),)

    async def scenario() -> tuple[Source, Degraded | None]:
        [entity] = await resolver.resolve(["u1"], selection)
        result = entity.groups["features"]
        return result.source, result.degraded

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        source, degraded = runner.run(scenario())
    assert store.asked_at is not None and store.abandoned_at is not None
    return store.abandoned_at - store.asked_at, source, degraded


@pytest.mark.parametrize("profile", list(BUDGET_MS))
def test_each_profile_sets_its_feature_budget_as_the_deadline(profile: ProfileName) -> None:
    settings = Settings(profile=profile)
    assert settings.deadline_s == pytest.approx(BUDGET_MS[profile] / 1000)


def test_an_explicit_deadline_beats_the_profile() -> None:
    assert Settings(profile="ads", feature_deadline_ms=25).deadline_s == pytest.approx(0.025)


def test_the_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATSERVE_PROFILE", "search")
    assert Settings().deadline_s == pytest.approx(0.030)


@pytest.mark.parametrize(
    ("profile", "waits_ms"),
    [
        # 2 ms early: event-loop timers fire up to a millisecond late, and the stage must
        # end within the budget.
        ("payments", 8.0),
        ("recommendation", 18.0),
        ("search", 28.0),
        ("personalization", 38.0),
        # A short deadline gives up at most a fifth of itself: 0.6 ms of 3.
        ("ads", 2.4),
    ],
)
def test_the_resolver_stops_waiting_early_by_the_slack(
    profile: ProfileName, waits_ms: float
) -> None:
    waited, source, degraded = waited_s(Settings(profile=profile).deadline_s)
    assert waited == pytest.approx(waits_ms / 1000, abs=1e-9)
    assert (source, degraded) == (Source.UNAVAILABLE, Degraded.DEADLINE)


def test_a_store_left_no_time_is_not_asked() -> None:
    """Redis used the whole deadline: the backing store behind it, however quick, is skipped,
    and the answer says the deadline shaped it."""
    redis, backing = SilentStore(), PromptStore({"tx_count_1h": 9})
    tiers = [
        Tier(Source.REDIS, redis, CircuitBreaker("redis", 5, 1.0)),
        Tier(Source.BACKING, backing, CircuitBreaker("backing", 5, 1.0)),
    ]
    cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
    resolver = Resolver(EXAMPLE_REGISTRY, tiers, cache, 0.010)

    async def scenario() -> tuple[Source, Degraded | None]:
        [entity] = await resolver.resolve(["u1"], ((FEATURES, FEATURES.feature_names),))
        return entity.groups["features"].source, entity.groups["features"].degraded

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        assert runner.run(scenario()) == (Source.UNAVAILABLE, Degraded.DEADLINE)
    assert (redis.reads, backing.reads) == (1, 0)
