"""The resolver under Redis faults: deadline, breaker, pool shedding, stale-on-error,
kept connections, error replies, and how each answer says it was degraded."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import uvloop

from features.breaker import BreakerState
from features.burst_log import BurstLog
from features.ingest.updates import parse_update
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, GroupResult, Resolver, Tier
from features.serving.tiers import backing_tier, redis_tier
from features.settings import Settings
from features.sources import Degraded, Source
from features.stores.factory import async_backing_store
from features.stores.redis import AsyncRedisStore, RedisStore, async_redis_store, sync_client
from features.timing import StageTimer
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from service.harness.waiting import wait_until
from tests.support.clock import ManualClock

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
SELECTION = ((FEATURES, FEATURES.feature_names),)
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
"""The service runs on uvloop (BentoML's default); tools and tests on asyncio's own loop."""

_LOG = logging.getLogger("test.faults")


def patient(url: str, **overrides: Any) -> Settings:
    """Settings for ``url`` whose Redis timeouts a loaded machine does not reach (5 s, not the
    shipped 50-100 ms): reads that must succeed do; tests about time override them."""
    return Settings(
        **{
            "redis_url": url,
            "redis_socket_timeout_ms": 5000.0,
            "redis_connect_timeout_ms": 5000.0,
            **overrides,
        }
    )


def write_users(url: str, count: int = 10, event_s: int = NOW) -> None:
    """Users u0..u{count-1}, each with ``tx_count_1h`` = its number."""
    store = RedisStore(sync_client(patient(url)))
    store.write(
        [parse_update(FEATURES, f"u{i}", event_s, {"tx_count_1h": i}) for i in range(count)]
    )
    store.close()


@pytest.fixture
def proxy(own_redis: LocalRedis) -> Iterator[TcpProxy]:
    """A fault-injecting proxy in front of a server of this test's own, holding users u0..u9."""
    write_users(own_redis.url)
    with TcpProxy("127.0.0.1", own_redis.port) as running:
        yield running


def resolver_for(
    settings: Settings, clock: ManualClock, deadline_s: float, backing: Tier | None = None
) -> tuple[Resolver, AsyncRedisStore]:
    """A resolver over ``settings``' Redis (and ``backing``), breaker and cache on ``clock``."""
    store = async_redis_store(settings)
    cache: FeatureCache[CachedGroup] = FeatureCache(
        settings.cache_ttl_s, settings.cache_maxsize, settings.stale_cache_maxsize, timer=clock
    )
    log = BurstLog(_LOG, timer=clock)
    tiers = [redis_tier(store, settings, clock)] + ([backing] if backing else [])
    return Resolver(EXAMPLE_REGISTRY, tiers, cache, deadline_s, log), store


def patient_twin(resolver: Resolver) -> Resolver:
    """A resolver over the same stores and breakers with a 5 s deadline and no cache, for a
    read that must succeed in a test about short deadlines."""
    cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
    return Resolver(EXAMPLE_REGISTRY, resolver.tiers, cache, 5.0, BurstLog(_LOG))


async def source_of(resolver: Resolver, entity_id: str) -> GroupResult:
    # The safety net: a resolve that waited on the hung socket would take a minute.
    [entity] = await asyncio.wait_for(resolver.resolve([entity_id], SELECTION), 30)
    return entity.groups["features"]


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` on the running loop until it holds, at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.002)


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())


def test_a_hung_redis_is_abandoned_at_the_deadline(
    proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=proxy.redis_url, redis_socket_timeout_ms=60_000)

    async def scenario() -> list[Any]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.05)
        assert await store.ping()
        proxy.blackhole(True)
        results = [await source_of(resolver, "u1") for _ in range(2)]
        await store.close()
        return results

    with caplog.at_level(logging.ERROR, logger="test.faults"):
        results = asyncio.run(scenario())
    for result in results:
        assert (result.source, result.degraded) == (Source.UNAVAILABLE, Degraded.DEADLINE)
        assert dict(result.values) == dict(FEATURES.defaults)
    [record] = caplog.records  # once per burst
    assert record.getMessage() == (
        "redis read got no reply within the 50 ms feature deadline; falling back"
    )


def test_an_open_breaker_skips_redis_and_a_probe_closes_it(proxy: TcpProxy) -> None:
    settings = patient(
        proxy.redis_url,
        breaker_failures=2,
        breaker_reset_s=1.0,
        cache_ttl_s=0,
        redis_socket_timeout_ms=2000,
    )
    clock = ManualClock()

    async def scenario() -> list[tuple[Source, Degraded | None, BreakerState, int]]:
        # Half a second: long enough for the probe's read to succeed on a loaded machine.
        resolver, store = resolver_for(settings, clock, deadline_s=0.5)
        breaker = resolver.tiers[0].breaker
        assert await store.ping()
        seen = []

        async def step() -> None:
            proxy.reset_counters()
            result = await source_of(resolver, "u1")
            seen.append((result.source, result.degraded, breaker.state, proxy.bytes_up))

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
    assert [(source, why, state) for source, why, state, _ in steps] == [
        (Source.UNAVAILABLE, Degraded.DEADLINE, BreakerState.CLOSED),
        (Source.UNAVAILABLE, Degraded.DEADLINE, BreakerState.OPEN),
        (Source.UNAVAILABLE, Degraded.BREAKER_OPEN, BreakerState.OPEN),
        (Source.REDIS, None, BreakerState.CLOSED),
    ]
    # With the proxy forwarding again, only the probe reaches Redis.
    assert [sent > 0 for *_, sent in steps[2:]] == [False, True]


def test_a_nearly_exhausted_pool_sheds_reads_and_the_trip_holds(
    proxy: TcpProxy, own_redis: LocalRedis
) -> None:
    settings = patient(proxy.redis_url, redis_pool_size=2, breaker_pool_usage=0.8, cache_ttl_s=0)
    proxy.set_latency(0.2)

    async def scenario() -> tuple[list[GroupResult], BreakerState, str]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        results = await asyncio.gather(*(source_of(resolver, f"u{i}") for i in range(3)))
        # The two reads that filled the pool have ended well; the trip must hold anyway.
        state, reason = resolver.tiers[0].breaker.state, resolver.tiers[0].breaker.reason
        await store.close()
        return list(results), state, reason

    with redis.Redis(port=own_redis.port) as inspector:
        inspector.config_resetstat()
        (first, second, third), state, reason = asyncio.run(scenario())
        hmget_calls = inspector.info("commandstats")["cmdstat_hmget"]["calls"]
    assert (first.source, second.source) == (Source.REDIS, Source.REDIS)
    assert (third.source, third.degraded) == (Source.UNAVAILABLE, Degraded.BREAKER_OPEN)
    assert (state, reason) == (BreakerState.OPEN, "pool_saturated")
    assert hmget_calls == 2


def test_under_partial_failure_the_breaker_stays_open_until_the_probe(
    proxy: TcpProxy, own_redis: LocalRedis
) -> None:
    """Some reads fail at once while others are slow to succeed: the late successes must
    not close the breaker that the failures opened; only the probe may.

    Two resolvers share one Redis breaker, as two paths to one server would: one reads
    through a proxy 0.3 s away, the other reaches Redis directly as a user whose ACL
    refuses the keys of u7 and u8 (NOPERM: an error reply about the store, not the key).
    """
    with redis.Redis(port=own_redis.port) as admin:
        admin.acl_setuser(
            "partial", enabled=True, passwords=["+partial"], keys=["user:{u[0-6]}:*"],
            commands=["+@all"],
        )  # fmt: skip
    slow_settings = patient(proxy.redis_url, breaker_failures=2, cache_ttl_s=0)
    partial_url = f"redis://partial:partial@127.0.0.1:{own_redis.port}/0"
    fast_settings = slow_settings.model_copy(update={"redis_url": partial_url})
    clock = ManualClock()
    proxy.set_latency(0.3)

    async def scenario() -> tuple[list[GroupResult], list[BreakerState], GroupResult]:
        slow, slow_store = resolver_for(slow_settings, clock, deadline_s=5.0)
        breaker = slow.tiers[0].breaker
        fast_store = async_redis_store(fast_settings)
        cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
        fast = Resolver(
            EXAMPLE_REGISTRY, [Tier(Source.REDIS, fast_store, breaker)], cache, 5.0, BurstLog(_LOG)
        )
        slow_reads = [asyncio.create_task(source_of(slow, f"u{i}")) for i in range(4)]
        failing = await asyncio.gather(*(source_of(fast, f"u{i}") for i in (7, 8)))
        states = [breaker.state]
        succeeded = await asyncio.gather(*slow_reads)
        states.append(breaker.state)
        clock.now += slow_settings.breaker_reset_s
        probed = await source_of(fast, "u1")
        states.append(breaker.state)
        await slow_store.close()
        await fast_store.close()
        return [*failing, *succeeded], states, probed

    results, states, probed = asyncio.run(scenario())
    assert [(r.source, r.degraded) for r in results] == [
        (Source.UNAVAILABLE, Degraded.ERROR_REPLY)
    ] * 2 + [(Source.REDIS, None)] * 4
    assert states == [BreakerState.OPEN, BreakerState.OPEN, BreakerState.CLOSED]
    assert probed.source is Source.REDIS


def test_stale_values_are_served_with_their_age_within_the_freshness_window(
    proxy: TcpProxy,
) -> None:
    settings = patient(proxy.redis_url, cache_ttl_s=5, redis_socket_timeout_ms=2000)
    clock = ManualClock()

    async def scenario() -> list[GroupResult]:
        # Half a second: long enough for the first read to succeed on a loaded machine.
        resolver, store = resolver_for(settings, clock, deadline_s=0.5)
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
    assert (fetched.degraded, cached.degraded) == (None, None)
    assert (stale.source, stale.degraded) == (Source.STALE, Degraded.DEADLINE)
    assert stale.stale_age_s == 12
    # Stale values keep the event time they were read with: their age is the data's own.
    assert stale.event_ms == cached.event_ms == fetched.event_ms == NOW * 1000
    assert too_old.event_ms is None
    assert stale.values == fetched.values
    assert (too_old.source, too_old.degraded) == (Source.UNAVAILABLE, Degraded.DEADLINE)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_reply_that_arrived_while_the_worker_was_busy_is_used(proxy: TcpProxy, loop: str) -> None:
    """The deadline bounds waiting for Redis: a busy event loop that gets to an arrived
    reply after the deadline still uses it, and Redis is not blamed."""
    settings = patient(proxy.redis_url, cache_ttl_s=0)

    async def scenario() -> tuple[GroupResult, int, int, str]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.08)
        assert await store.warm(1) == 1
        await until(lambda: proxy.connections == 1)  # the proxy's accept lags the connect
        proxy.reset_counters()
        # The request reaches Redis 50 ms after it is sent, the reply comes back 50 ms later:
        # past the deadline, while the loop is held below.
        proxy.set_latency(0.1)
        reading = asyncio.create_task(resolver.resolve(["u3"], SELECTION))
        # Sending takes a few loop turns (the pool checks the connection first; how many
        # depends on the event loop and redis-py): wait until the request is on its way.
        await until(lambda: proxy.bytes_up > 0)
        before = proxy.bytes_down
        # A CPU-bound neighbour holds the loop past the deadline and until the reply has
        # reached this process (the proxy forwarded it), however long that takes.
        wait_until(lambda: proxy.bytes_down > before, 10.0)
        during = proxy.bytes_down - before
        [entity] = await reading
        result = entity.groups["features"]
        failure = resolver.tiers[0].breaker.last_failure
        await store.close()
        return result, before, during, failure

    result, before, during, failure = run_on(loop, scenario)
    assert before == 0 and during > 0, "the reply reached the worker while its loop was busy"
    assert (result.source, result.degraded) == (Source.REDIS, None)
    assert result.values["tx_count_1h"] == 3
    assert failure == ""


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_reply_that_has_not_arrived_by_the_deadline_is_abandoned_even_on_a_busy_loop(
    proxy: TcpProxy, own_redis: LocalRedis, loop: str
) -> None:
    settings = patient(proxy.redis_url, cache_ttl_s=0)

    async def scenario() -> tuple[GroupResult, str]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.02)
        assert await store.warm(1) == 1
        own_redis.pause()  # the read gets no answer: only the deadline can end it
        try:
            reading = asyncio.create_task(resolver.resolve(["u3"], SELECTION))
            await asyncio.sleep(0)
            time.sleep(0.1)
            [entity] = await reading
        finally:
            own_redis.resume()
        failure = resolver.tiers[0].breaker.last_failure
        await store.close()
        return entity.groups["features"], failure

    result, failure = run_on(loop, scenario)
    assert (result.source, result.degraded) == (Source.UNAVAILABLE, Degraded.DEADLINE)
    assert "deadline" in failure


def test_an_abandoned_read_keeps_its_connection_and_never_hands_its_reply_on(
    proxy: TcpProxy,
) -> None:
    settings = patient(proxy.redis_url, cache_ttl_s=0, breaker_failures=9)

    async def scenario() -> tuple[list[GroupResult], int]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.01)
        assert await store.warm(1) == 1
        await until(lambda: proxy.connections == 1)  # the proxy's accept lags the connect
        proxy.reset_counters()
        proxy.set_latency(0.05)
        abandoned = [await source_of(resolver, "u1")]
        # The reply is drained in the background; then the connection is back in the pool.
        await until(lambda: store.pool_usage() == 0)
        abandoned.append(await source_of(resolver, "u2"))
        await until(lambda: store.pool_usage() == 0)
        proxy.set_latency(0.0)
        answered = await source_of(patient_twin(resolver), "u4")
        await store.close()
        return [*abandoned, answered], proxy.connections

    (first, second, answered), connections = asyncio.run(scenario())
    assert [(r.source, r.degraded) for r in (first, second)] == [
        (Source.UNAVAILABLE, Degraded.DEADLINE)
    ] * 2
    assert (answered.source, answered.values["tx_count_1h"]) == (Source.REDIS, 4)
    assert connections == 0, "every read used the connection opened at start-up"


def test_a_drain_that_gets_no_reply_within_the_socket_timeout_drops_its_connection(
    proxy: TcpProxy,
) -> None:
    # The drain waits this long for the reply; the read after it must succeed within it too.
    settings = patient(proxy.redis_url, cache_ttl_s=0, redis_socket_timeout_ms=1000)

    async def scenario() -> tuple[GroupResult, GroupResult, int]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=0.01)
        assert await store.warm(1) == 1
        await until(lambda: proxy.connections == 1)  # the proxy's accept lags the connect
        proxy.reset_counters()
        proxy.blackhole(True)
        lost = await source_of(resolver, "u1")
        await until(lambda: store.pool_usage() == 0)
        proxy.blackhole(False)
        answered = await source_of(patient_twin(resolver), "u5")
        await store.close()
        return lost, answered, proxy.connections

    lost, answered, connections = asyncio.run(scenario())
    assert (lost.source, lost.degraded) == (Source.UNAVAILABLE, Degraded.DEADLINE)
    assert (answered.source, answered.values["tx_count_1h"]) == (Source.REDIS, 5)
    assert connections == 1, "the out-of-step connection was replaced by a new one"


def test_warm_opens_connections_that_reads_then_use(proxy: TcpProxy) -> None:
    settings = patient(proxy.redis_url, cache_ttl_s=0, redis_pool_size=4)

    async def scenario() -> tuple[int, int]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        opened = await store.warm(8)
        await until(lambda: proxy.connections == opened)  # the proxy's accept lags the connect
        await asyncio.gather(*(source_of(resolver, f"u{i}") for i in range(4)))
        await store.close()
        return opened, proxy.connections

    assert asyncio.run(scenario()) == (4, 4)


def test_a_wrong_type_degrades_that_entity_group_only_and_is_never_cached(
    proxy: TcpProxy, own_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    key = "user:{u5}:features"
    with redis.Redis(port=own_redis.port) as admin:
        admin.delete(key)
        admin.set(key, "not a hash")
    settings = patient(proxy.redis_url, cache_ttl_s=5)
    clock = ManualClock()

    async def scenario() -> tuple[list[GroupResult], GroupResult, str]:
        resolver, store = resolver_for(settings, clock, deadline_s=5.0)
        batch = await resolver.resolve(["u1", "u5", "u2"], SELECTION)
        failure = resolver.tiers[0].breaker.last_failure
        with redis.Redis(port=own_redis.port) as admin:
            admin.delete(key)
        write_users(proxy.redis_url, 6)
        again = await source_of(resolver, "u5")  # within the cache TTL: nothing was cached
        await store.close()
        return [entity.groups["features"] for entity in batch], again, failure

    with caplog.at_level(logging.ERROR):
        (one, five, two), again, failure = asyncio.run(scenario())
    assert [(r.source, r.degraded) for r in (one, two)] == [(Source.REDIS, None)] * 2
    assert (five.source, five.degraded) == (Source.UNAVAILABLE, Degraded.BAD_VALUE)
    assert dict(five.values) == dict(FEATURES.defaults)
    assert (again.source, again.values["tx_count_1h"]) == (Source.REDIS, 5)
    # The key's fault, not the store's: the breaker heard nothing of it.
    assert failure == ""
    [record] = caplog.records
    assert record.getMessage().startswith(f"{key} holds a bad value")
    assert "WRONGTYPE" in record.getMessage()


def test_many_bad_keys_never_open_the_breaker_for_the_healthy_ones(
    own_redis: LocalRedis,
) -> None:
    """A producer bug overwrote twenty users' hashes: reading them again and again, more
    times than the breaker's failure count, leaves every other user's answer real."""
    write_users(own_redis.url, 2)
    with redis.Redis(port=own_redis.port) as admin:
        for i in range(10, 30):
            admin.set(f"user:{{u{i}}}:features", "a string where a hash belongs")
    settings = patient(own_redis.url, breaker_failures=2, cache_ttl_s=0)

    async def scenario() -> tuple[list[GroupResult], list[GroupResult], BreakerState]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        bad: list[GroupResult] = []
        healthy: list[GroupResult] = []
        for _ in range(3):
            bad += [await source_of(resolver, f"u{i}") for i in range(10, 30)]
            healthy.append(await source_of(resolver, "u1"))
        state = resolver.tiers[0].breaker.state
        await store.close()
        return bad, healthy, state

    bad, healthy, state = asyncio.run(scenario())
    assert {(r.source, r.degraded) for r in bad} == {(Source.UNAVAILABLE, Degraded.BAD_VALUE)}
    assert {(r.source, r.degraded) for r in healthy} == {(Source.REDIS, None)}
    assert state is BreakerState.CLOSED


def test_an_acl_that_refuses_the_keys_is_a_failure_until_it_is_fixed(
    own_redis: LocalRedis,
) -> None:
    write_users(own_redis.url)
    settings = patient(own_redis.url, cache_ttl_s=5, breaker_failures=3, breaker_reset_s=1.0)
    clock = ManualClock()

    async def scenario() -> tuple[list[GroupResult], BreakerState, str, list[GroupResult]]:
        resolver, store = resolver_for(settings, clock, deadline_s=5.0)
        breaker = resolver.tiers[0].breaker
        known = await source_of(resolver, "u1")
        assert known.source is Source.REDIS
        clock.now += 6  # u1's cache entry ends; its stale copy stays
        with redis.Redis(port=own_redis.port) as admin:
            admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~other:*")
            during = [await source_of(resolver, u) for u in ("u1", "u2", "u3", "u4")]
            state, reason = breaker.state, breaker.reason
            admin.execute_command("ACL", "SETUSER", "default", "allkeys")
        clock.now += settings.breaker_reset_s
        after = [await source_of(resolver, u) for u in ("u2", "u3", "u4", "u6")]
        await store.close()
        return during, state, reason, after

    during, state, reason, after = asyncio.run(scenario())
    assert (during[0].source, during[0].degraded) == (Source.STALE, Degraded.ERROR_REPLY)
    assert [(r.source, r.degraded) for r in during[1:3]] == [
        (Source.UNAVAILABLE, Degraded.ERROR_REPLY)
    ] * 2
    assert (during[3].source, during[3].degraded) == (Source.UNAVAILABLE, Degraded.BREAKER_OPEN)
    assert state is BreakerState.OPEN
    assert "NOPERM" in reason
    # Read during the fault or never before: all from Redis now, no defaults were cached.
    assert [(r.source, r.values["tx_count_1h"]) for r in after] == [
        (Source.REDIS, 2),
        (Source.REDIS, 3),
        (Source.REDIS, 4),
        (Source.REDIS, 6),
    ]


def test_a_busy_server_answers_busy_which_is_a_failure(own_redis: LocalRedis) -> None:
    write_users(own_redis.url)
    settings = patient(own_redis.url, cache_ttl_s=0)
    with redis.Redis(port=own_redis.port) as admin:
        admin.config_set("busy-reply-threshold", 10)

    def busy_script() -> None:
        # Ends with an error once SCRIPT KILL stops it, below.
        with redis.Redis(port=own_redis.port) as runner, suppress(redis.exceptions.ResponseError):
            runner.eval("while true do end", 0)

    async def scenario() -> list[GroupResult]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        assert (await source_of(resolver, "u2")).source is Source.REDIS
        script = threading.Thread(target=busy_script)
        script.start()
        answers: list[GroupResult] = []
        try:
            async with asyncio.timeout(10):
                # Until the script runs past the threshold and Redis answers BUSY.
                while not answers or answers[-1].source is Source.REDIS:
                    answers.append(await source_of(resolver, "u2"))
        finally:
            with redis.Redis(port=own_redis.port) as admin:
                await until(lambda: _kill_script(admin))
            script.join()
        failure = resolver.tiers[0].breaker.last_failure
        await store.close()
        assert failure == "error_reply BUSY", failure
        return answers

    *_, busy = asyncio.run(scenario())
    # Read well before the script: its last values stand in, saying why.
    assert (busy.source, busy.degraded) == (Source.STALE, Degraded.ERROR_REPLY)


def _kill_script(admin: redis.Redis) -> bool:
    try:
        admin.script_kill()
    except redis.exceptions.ResponseError:
        return False  # NOTBUSY: the script has not started yet
    return True


def test_default_is_cached_only_when_every_store_answered(own_redis: LocalRedis) -> None:
    settings = patient(own_redis.url, cache_ttl_s=5)

    async def scenario() -> list[GroupResult]:
        resolver, store = resolver_for(settings, ManualClock(), deadline_s=5.0)
        answers = [await source_of(resolver, "u3")]
        write_users(own_redis.url)
        answers.append(await source_of(resolver, "u3"))  # "no data" was kept, briefly
        own_redis.stop()
        answers.append(await source_of(resolver, "u4"))
        own_redis.start()
        write_users(own_redis.url)
        answers.append(await source_of(resolver, "u4"))  # the fault's defaults were not kept
        await store.close()
        return answers

    no_data, remembered, fault, recovered = asyncio.run(scenario())
    assert (no_data.source, no_data.degraded) == (Source.DEFAULT, None)
    assert (remembered.source, remembered.degraded) == (Source.CACHE, None)
    assert dict(remembered.values) == dict(FEATURES.defaults)
    assert (fault.source, fault.degraded) == (Source.UNAVAILABLE, Degraded.STORE_ERROR)
    assert (recovered.source, recovered.values["tx_count_1h"]) == (Source.REDIS, 4)


def test_the_backing_store_standing_in_for_redis_says_so(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    now = int(time.time())
    settings = patient(own_redis.url, cache_ttl_s=0)

    async def scenario() -> list[GroupResult]:
        backing = async_backing_store(f"sqlite:{tmp_path / 'backing.sqlite3'}")
        await backing.write([parse_update(FEATURES, "b1", now, {"tx_count_1h": 11})])
        resolver, store = resolver_for(
            settings, ManualClock(), deadline_s=5.0, backing=backing_tier(backing, settings)
        )
        answers = [await source_of(resolver, "b1")]
        own_redis.stop()
        answers.append(await source_of(resolver, "b1"))
        answers.append(await source_of(resolver, "nobody"))
        await store.close()
        await backing.close()
        return answers

    redis_lacked, redis_failed, nobody = asyncio.run(scenario())
    assert (redis_lacked.source, redis_lacked.degraded) == (Source.BACKING, None)
    assert (redis_failed.source, redis_failed.degraded) == (Source.BACKING, Degraded.STORE_ERROR)
    assert redis_failed.values["tx_count_1h"] == 11
    assert (nobody.source, nobody.degraded) == (Source.UNAVAILABLE, Degraded.STORE_ERROR)


def test_a_group_redis_holds_is_never_asked_of_the_backing_store(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    write_users(own_redis.url)
    settings = patient(own_redis.url, cache_ttl_s=0)

    async def scenario() -> tuple[GroupResult, list[str]]:
        backing = async_backing_store(f"sqlite:{tmp_path / 'backing.sqlite3'}")
        resolver, store = resolver_for(
            settings, ManualClock(), deadline_s=5.0, backing=backing_tier(backing, settings)
        )
        timer = StageTimer()
        [entity] = await resolver.resolve(["u3"], SELECTION, timer)
        await store.close()
        await backing.close()
        return entity.groups["features"], list(timer.milliseconds())

    result, stages = asyncio.run(scenario())
    assert (result.source, result.values["tx_count_1h"]) == (Source.REDIS, 3)
    assert "backing" not in stages, stages


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
