"""The service's metrics: degraded answers per entity, feature ages, the store gauges."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry

from features.breaker import BreakerState, CircuitBreaker
from features.burst_log import BurstLog
from features.registry import FeatureGroup
from features.serving.resolver import ResolvedBatch, ResolvedGroup, Tier
from features.settings import Settings
from features.sources import Degraded, Source
from features.stores.base import ReadRequest
from features.stores.redis import async_redis_store
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.metrics import (
    AGE_BUCKETS_S,
    BREAKER_STATE_VALUES,
    BatchHistogram,
    StoreGauges,
    observe_request,
    start_series,
)

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
NOW = 1_764_230_400.0


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def degraded_count(endpoint: str, reason: str) -> float:
    return sample("featserve_degraded_answers_total", endpoint=endpoint, reason=reason)


def group(
    chosen: FeatureGroup,
    sources: tuple[Source, ...],
    degraded: tuple[Degraded | None, ...] | None = None,
    event_ms: tuple[int | None, ...] | None = None,
) -> ResolvedGroup:
    rows = len(sources)
    values = tuple(tuple(chosen.defaults.values()) for _ in range(rows))
    return ResolvedGroup(
        chosen,
        chosen.feature_names,
        values,
        ((),) * rows,
        event_ms or (None,) * rows,
        sources,
        (None,) * rows,
        degraded or (None,) * rows,
    )


def test_each_degraded_entity_counts_once_under_its_first_reason() -> None:
    batch = ResolvedBatch(
        ("healthy", "both", "second"),
        (
            group(
                FEATURES,
                (Source.REDIS, Source.UNAVAILABLE, Source.CACHE),
                (None, Degraded.DEADLINE, None),
            ),
            group(
                EMBEDDING,
                (Source.REDIS, Source.STALE, Source.UNAVAILABLE),
                (None, Degraded.ERROR_REPLY, Degraded.BREAKER_OPEN),
            ),
        ),
    )
    reasons = ("deadline", "error_reply", "breaker_open")
    before = {reason: degraded_count("features", reason) for reason in reasons}
    observe_request("features", {"total": 1.0}, batch)
    counted = {reason: degraded_count("features", reason) - before[reason] for reason in reasons}
    assert counted == {"deadline": 1, "error_reply": 0, "breaker_open": 1}


def test_answers_no_fault_shaped_count_nothing() -> None:
    batch = ResolvedBatch(("a",), (group(FEATURES, (Source.DEFAULT,), (None,)),))
    before = degraded_count("score", "deadline")
    observe_request("score", {"total": 1.0}, batch)
    assert degraded_count("score", "deadline") == before


def test_ages_are_observed_by_source_and_values_past_freshness_counted() -> None:
    window_s = FEATURES.freshness.total_seconds()
    ages = (10.0, window_s + 1, 30.0, None)
    event_ms = tuple(None if age is None else round((NOW - age) * 1000) for age in ages)
    sources = (Source.REDIS, Source.REDIS, Source.CACHE, Source.REDIS)
    batch = ResolvedBatch(("a", "b", "c", "d"), (group(FEATURES, sources, event_ms=event_ms),))

    def seen() -> dict[str, float]:
        return {
            "redis count": sample(
                "featserve_feature_age_seconds_count", group="features", source="redis"
            ),
            "redis sum": sample(
                "featserve_feature_age_seconds_sum", group="features", source="redis"
            ),
            "redis within window": sample(
                "featserve_feature_age_seconds_bucket",
                group="features",
                source="redis",
                le=f"{window_s:.1f}",
            ),
            "cache count": sample(
                "featserve_feature_age_seconds_count", group="features", source="cache"
            ),
            "redis past window": sample(
                "featserve_feature_groups_past_freshness_total", group="features", source="redis"
            ),
            "cache past window": sample(
                "featserve_feature_groups_past_freshness_total", group="features", source="cache"
            ),
        }

    before = seen()
    observe_request("features", {"total": 1.0}, batch, now_s=NOW)
    after = seen()
    assert {name: after[name] - before[name] for name in after} == pytest.approx(
        {
            "redis count": 2,  # the value of unknown age is not observed
            "redis sum": 10.0 + window_s + 1,
            "redis within window": 1,
            "cache count": 1,
            "redis past window": 1,
            "cache past window": 0,
        }
    )


def test_start_series_exposes_every_counter_a_ratio_divides_by_at_zero() -> None:
    # An endpoint and a path no other test uses: their series exist only once started.
    wanted = {
        ("featserve_answers_total", (("endpoint", "warm"),)),
        ("featserve_degraded_answers_total", (("endpoint", "warm"), ("reason", "breaker_open"))),
        ("featserve_overload_refusals_total", (("path", "/warm"),)),
        ("featserve_feature_groups_total", (("group", "features"), ("source", "unavailable"))),
        (
            "featserve_feature_groups_past_freshness_total",
            (("group", "embedding"), ("source", "stale")),
        ),
        ("featserve_cache_lookups_total", (("result", "hit"),)),
    }

    def values() -> dict[str, float | None]:
        return {name: REGISTRY.get_sample_value(name, dict(labels)) for name, labels in wanted}

    assert values()["featserve_answers_total"] is None
    start_series(["warm"], ["/warm"], EXAMPLE_REGISTRY.groups_of("user"))
    assert all(value is not None for value in values().values()), values()
    assert values()["featserve_answers_total"] == 0


def test_every_groups_freshness_window_and_ttl_is_an_age_bucket() -> None:
    for chosen in EXAMPLE_REGISTRY.groups_of("user"):
        assert chosen.freshness.total_seconds() in AGE_BUCKETS_S
        assert chosen.ttl.total_seconds() in AGE_BUCKETS_S


def test_observe_many_records_what_observe_does_one_at_a_time() -> None:
    amounts = [0.0, 1.0, 1.5, 59.9, 60.0, 3600.0, 3600.5, 1e9, 7.0, 7.0]
    registries = [CollectorRegistry(), CollectorRegistry()]
    one, many = (
        BatchHistogram("age_seconds", "ages", ["group"], buckets=AGE_BUCKETS_S, registry=r)
        for r in registries
    )
    for amount in amounts:
        one.labels("g").observe(amount)
    many.labels("g").observe_many(amounts)
    many.labels("g").observe_many([])

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    assert samples(registries[1]) == samples(registries[0])


def test_store_gauges_follow_the_breakers_and_the_pools_peak(redis_url: str) -> None:
    clock = [0.0]
    redis_breaker = CircuitBreaker("redis", 1, 1.0, lambda: clock[0])
    backing_breaker = CircuitBreaker("backing", 1, 1.0, lambda: clock[0])

    async def scenario() -> list[dict[str, float]]:
        store = async_redis_store(Settings(redis_url=redis_url, redis_pool_size=7))
        tiers = [
            Tier(Source.REDIS, store, redis_breaker),
            Tier(Source.BACKING, store, backing_breaker),
        ]
        gauges = StoreGauges(tiers, store, store, BurstLog(logging.getLogger(__name__)))
        seen = []

        def publish() -> None:
            gauges.publish()
            seen.append(
                {
                    "redis": sample("featserve_breaker_state", store="redis", node=""),
                    "backing": sample("featserve_breaker_state", store="backing", node=""),
                    "in use": sample("featserve_redis_pool_connections_in_use"),
                    "limit": sample("featserve_redis_pool_connections_limit"),
                }
            )

        publish()
        redis_breaker.trip("timeout")
        # Three reads at once hold three connections; the next sample after them sees none.
        await asyncio.gather(
            *(store.read([ReadRequest(f"u{i}", FEATURES, ("tx_count_1h",))]) for i in range(3))
        )
        publish()
        clock[0] += 1.0
        publish()
        await store.close()
        return seen

    closed, opened, half_open = asyncio.run(scenario())
    assert closed == {"redis": 0, "backing": 0, "in use": 0, "limit": 7}
    assert opened["redis"] == BREAKER_STATE_VALUES[BreakerState.OPEN] == 2
    assert half_open["redis"] == BREAKER_STATE_VALUES[BreakerState.HALF_OPEN] == 1
    assert (opened["backing"], half_open["backing"]) == (0, 0)
    assert (opened["in use"], half_open["in use"]) == (3, 0)


def memory_samples(node: str = "") -> dict[str, float | None]:
    return {
        name: sample(f"featserve_redis_{name}", node=node)
        for name in ("used_memory_bytes", "maxmemory_bytes", "evicted_keys")
    }


def test_redis_memory_and_evictions_are_sampled_into_gauges_and_kept_for_the_status() -> None:
    """A Redis with a small maxmemory that evicts: the gauges show its limit, its use and
    the keys it dropped, as INFO says them."""
    with LocalRedis() as server, redis.Redis(port=server.port) as admin:
        admin.config_set("maxmemory", 2_000_000)
        admin.config_set("maxmemory-policy", "allkeys-lru")
        for start in range(0, 5000, 100):
            admin.mset({f"user:{{u{i}}}:embedding": b"x" * 1000 for i in range(start, start + 100)})
        info = admin.info("stats")
        assert info["evicted_keys"] > 0

        async def scenario() -> StoreGauges:
            store = async_redis_store(Settings(redis_url=server.url))
            gauges = StoreGauges([], store, store, BurstLog(logging.getLogger(__name__)))
            await gauges.sample_memory()
            await store.close()
            return gauges

        gauges = asyncio.run(scenario())
        evicted_then = admin.info("stats")["evicted_keys"]
    [report] = gauges.memory
    assert (report.node, report.max_bytes, report.policy) == ("", 2_000_000, "allkeys-lru")
    assert 0 < report.used_bytes <= 2_000_000 * 1.1
    assert info["evicted_keys"] <= report.evicted_keys <= evicted_then
    assert gauges.memory_error == ""
    assert memory_samples() == {
        "used_memory_bytes": report.used_bytes,
        "maxmemory_bytes": 2_000_000,
        "evicted_keys": report.evicted_keys,
    }


def test_a_user_that_may_not_run_info_leaves_the_memory_unknown_not_the_service() -> None:
    with LocalRedis() as server, redis.Redis(port=server.port) as admin:
        admin.acl_setuser(
            "reader", enabled=True, passwords=["+reader"], keys=["*"], commands=["+@read"]
        )

        async def scenario() -> StoreGauges:
            url = f"redis://reader:reader@127.0.0.1:{server.port}/0"
            store = async_redis_store(Settings(redis_url=url))
            gauges = StoreGauges([], store, store, BurstLog(logging.getLogger(__name__)))
            await gauges.sample_memory()
            await store.close()
            return gauges

        gauges = asyncio.run(scenario())
    assert (gauges.memory, gauges.memory_error) == ([], "store_error")
