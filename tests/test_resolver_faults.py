"""The resolver under Redis faults: deadline, breaker, pool shedding, stale-on-error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from features.burst_log import BurstLog
from features.ingest.updates import parse_update
from features.registry import FRAUD_REGISTRY
from features.serving.breaker import BreakerState
from features.serving.cache import FeatureCache
from features.serving.resolver import LOOP_LAG_S, CachedGroup, GroupResult, Resolver, Source
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.stores.redis import AsyncRedisStore, RedisStore, async_redis_store, sync_client
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy

FEATURES = FRAUD_REGISTRY.group("user", "features")
SELECTION = ((FEATURES, FEATURES.feature_names),)
NOW = 1764230400


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def proxy(own_redis: LocalRedis) -> Iterator[TcpProxy]:
    """A fault-injecting proxy in front of a server of this test's own, holding users u0..u9."""
    store = RedisStore(sync_client(Settings(redis_url=own_redis.url)))
    store.write([parse_update(FEATURES, f"u{i}", NOW, {"tx_count_1h": i}) for i in range(10)])
    store.close()
    with TcpProxy("127.0.0.1", own_redis.port) as running:
        yield running


def resolver_for(
    settings: Settings, clock: ManualClock, deadline_s: float, loop_lag_s: float = 1.0
) -> tuple[Resolver, AsyncRedisStore]:
    """A resolver over ``settings``' Redis; by default any missed deadline counts against
    Redis, so a test process short of CPU still sees the breaker open."""
    store = async_redis_store(settings)
    cache: FeatureCache[CachedGroup] = FeatureCache(
        settings.cache_ttl_s, settings.cache_maxsize, settings.stale_cache_maxsize, timer=clock
    )
    log = BurstLog(logging.getLogger("test.faults"), timer=clock)
    tier = redis_tier(store, settings, clock)
    return Resolver(FRAUD_REGISTRY, [tier], cache, deadline_s, log, loop_lag_s), store


async def source_of(resolver: Resolver, entity_id: str) -> GroupResult:
    # The safety net: a resolve that waited on the hung socket would take a minute.
    [entity] = await asyncio.wait_for(resolver.resolve([entity_id], SELECTION), 30)
    return entity.groups["features"]


def test_a_hung_redis_is_abandoned_at_the_deadline(proxy: TcpProxy) -> None:
    settings = Settings(redis_url=proxy.redis_url, redis_socket_timeout_ms=60_000)

    async def scenario() -> list[Any]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.05)
        assert await store.ping()
        proxy.blackhole(True)
        results = [await source_of(resolver, "u1") for _ in range(2)]
        await store.close()
        return results

    for result in asyncio.run(scenario()):
        assert result.source is Source.DEFAULT
        assert dict(result.values) == dict(FEATURES.defaults)


def test_an_open_breaker_skips_redis_and_a_probe_closes_it(proxy: TcpProxy) -> None:
    settings = Settings(
        redis_url=proxy.redis_url, breaker_failures=2, breaker_reset_s=1.0, cache_ttl_s=0
    )
    clock = ManualClock()

    async def scenario() -> list[tuple[Source, BreakerState, int]]:
        resolver, store = resolver_for(settings, clock, deadline_s=0.05)
        breaker = resolver.tiers[0].breaker
        assert await store.ping()
        seen = []

        async def step() -> None:
            proxy.reset_counters()
            result = await source_of(resolver, "u1")
            seen.append((result.source, breaker.state, proxy.bytes_up))

        proxy.blackhole(True)
        await step()
        await step()
        proxy.blackhole(False)
        await step()
        clock.now += 1.5
        await step()
        await store.close()
        return seen

    steps = asyncio.run(scenario())
    assert [(source, state) for source, state, _ in steps] == [
        (Source.DEFAULT, BreakerState.CLOSED),
        (Source.DEFAULT, BreakerState.OPEN),
        (Source.DEFAULT, BreakerState.OPEN),
        (Source.REDIS, BreakerState.CLOSED),
    ]
    # With the proxy forwarding again, only the probe reaches Redis.
    assert [sent > 0 for _, _, sent in steps[2:]] == [False, True]


def test_a_nearly_exhausted_pool_sheds_reads_instead_of_queueing(
    proxy: TcpProxy, own_redis: LocalRedis
) -> None:
    settings = Settings(
        redis_url=proxy.redis_url,
        redis_pool_size=2,
        breaker_pool_usage=0.8,
        cache_ttl_s=0,
        redis_socket_timeout_ms=5000,
    )
    proxy.set_latency(0.2)

    async def scenario() -> list[GroupResult]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        results = await asyncio.gather(*(source_of(resolver, f"u{i}") for i in range(3)))
        await store.close()
        return list(results)

    with redis.Redis(port=own_redis.port) as inspector:
        inspector.config_resetstat()
        first, second, third = asyncio.run(scenario())
        hmget_calls = inspector.info("commandstats")["cmdstat_hmget"]["calls"]
    assert (first.source, second.source) == (Source.REDIS, Source.REDIS)
    assert third.source is Source.DEFAULT
    assert hmget_calls == 2


def test_stale_values_are_served_with_their_age_within_the_freshness_window(
    proxy: TcpProxy,
) -> None:
    settings = Settings(redis_url=proxy.redis_url, cache_ttl_s=5)
    clock = ManualClock()

    async def scenario() -> list[GroupResult]:
        resolver, store = resolver_for(settings, clock, deadline_s=0.05)
        results = [await source_of(resolver, "u7")]
        proxy.blackhole(True)
        clock.now += 2
        results.append(await source_of(resolver, "u7"))
        clock.now += 10
        results.append(await source_of(resolver, "u7"))
        clock.now += FEATURES.freshness.total_seconds()
        results.append(await source_of(resolver, "u7"))
        await store.close()
        return results

    fetched, cached, stale, too_old = asyncio.run(scenario())
    assert (fetched.source, cached.source) == (Source.REDIS, Source.CACHE)
    assert stale.source is Source.STALE
    assert stale.age_s == 12
    assert stale.values == fetched.values
    assert too_old.source is Source.DEFAULT


def test_a_deadline_missed_because_the_loop_was_busy_does_not_blame_redis(
    proxy: TcpProxy, own_redis: LocalRedis
) -> None:
    settings = Settings(
        redis_url=proxy.redis_url,
        breaker_failures=1,
        cache_ttl_s=0,
        redis_socket_timeout_ms=5000,
    )

    async def scenario() -> tuple[GroupResult, BreakerState]:
        resolver, store = resolver_for(
            settings, ManualClock(), deadline_s=0.02, loop_lag_s=LOOP_LAG_S
        )
        assert await store.ping()
        own_redis.pause()  # the read gets no answer: only the deadline can end it
        try:
            proxy.reset_counters()
            reading = asyncio.create_task(source_of(resolver, "u3"))
            while proxy.bytes_up == 0:  # until the read is on the wire
                await asyncio.sleep(0.0005)
            time.sleep(0.06)  # a CPU-bound neighbour holds the loop past the deadline
            result = await reading
        finally:
            own_redis.resume()
        await store.close()
        return result, resolver.tiers[0].breaker.state

    result, state = asyncio.run(scenario())
    assert result.source is Source.DEFAULT
    assert state is BreakerState.CLOSED


def test_breaker_reasons_are_categories_without_hosts_or_ports(
    proxy: TcpProxy, own_redis: LocalRedis
) -> None:
    settings = Settings(redis_url=proxy.redis_url, breaker_failures=1, cache_ttl_s=0)
    clock = ManualClock()

    async def scenario() -> list[str]:
        resolver, store = resolver_for(settings, clock, deadline_s=0.05)
        breaker = resolver.tiers[0].breaker
        reasons = []
        proxy.blackhole(True)
        await source_of(resolver, "u1")
        reasons.append(breaker.reason)
        proxy.blackhole(False)
        own_redis.kill()
        clock.now += 5.0
        await source_of(resolver, "u1")
        reasons.append(breaker.reason)
        await store.close()
        return reasons

    assert asyncio.run(scenario()) == ["deadline", "unreachable"]
