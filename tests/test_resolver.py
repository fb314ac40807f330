"""The resolver against a real Redis: one round trip, defaults, cache, single-flight, faults."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis

from features.breaker import CircuitBreaker
from features.burst_log import BurstLog
from features.errors import InvalidEntityId
from features.ingest.updates import parse_update
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, GroupResult, Resolver, Tier
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.sources import Degraded, Source
from features.stores.base import FeatureUpdate
from features.stores.redis import RedisStore, async_redis_store, sync_client
from features.timing import StageTimer
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from tests.support.clock import ManualClock
from tests.support.virtual_time import SilentStore, VirtualTimeLoop

USER_FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT_ITEMS = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
DEFAULTS = dict(USER_FEATURES.defaults)

T = TypeVar("T")
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


def write(settings: Settings, rows: list[FeatureUpdate]) -> None:
    store = RedisStore(sync_client(settings))
    store.write(rows)
    store.close()


class Harness:
    """A resolver over a fresh async client; build and use it inside one event loop."""

    def __init__(self, settings: Settings, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.store = async_redis_store(settings)
        self.cache: FeatureCache[CachedGroup] = FeatureCache(
            settings.cache_ttl_s, settings.cache_maxsize, timer=self.clock
        )
        self.log = BurstLog(logging.getLogger("test.resolver"), 10.0, timer=self.clock)
        tiers = [redis_tier(self.store, settings, self.clock)]
        # A generous deadline: these tests are about tiers and caching, not time.
        self.resolver = Resolver(EXAMPLE_REGISTRY, tiers, self.cache, 5.0, self.log)


def commands(client: redis.Redis, name: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_full_partial_and_missing_entities(settings: Settings) -> None:
    full: dict[str, float] = dict(zip(USER_FEATURES.feature_names, range(1, 11), strict=True))
    full |= {"tx_sum_1h": 10.5, "tx_sum_24h": 20.25, "avg_tx_90d": 33.0}
    full |= {"credit_score_bucket": 3, "is_premium": 1}
    write(
        settings,
        [
            parse_update(USER_FEATURES, "full", NOW, full),
            parse_update(USER_FEATURES, "partial", NOW, {"tx_count_1h": 4, "avg_tx_90d": 12.5}),
        ],
    )

    async def scenario() -> list[Any]:
        h = Harness(settings)
        selection = h.resolver.selection("user", ["features"])
        out = await h.resolver.resolve(["full", "partial", "missing"], selection)
        await h.store.close()
        return out

    full_r, partial_r, missing_r = (e.groups["features"] for e in run(scenario))
    assert (full_r.source, dict(full_r.values), full_r.defaulted) == (Source.REDIS, full, ())
    assert partial_r.source is Source.REDIS
    assert dict(partial_r.values) == DEFAULTS | {"tx_count_1h": 4, "avg_tx_90d": 12.5}
    assert set(partial_r.defaulted) == set(DEFAULTS) - {"tx_count_1h", "avg_tx_90d"}
    assert missing_r.source is Source.DEFAULT
    assert dict(missing_r.values) == DEFAULTS
    assert list(missing_r.values) == list(USER_FEATURES.feature_names)
    assert all(type(partial_r.values[f.name]) is type(f.default) for f in USER_FEATURES.features)


def test_a_batch_holds_each_group_as_columns_in_entity_order(settings: Settings) -> None:
    vector = tuple(i / 4 for i in range(16))
    write(
        settings,
        [
            parse_update(USER_FEATURES, "a", NOW, {"tx_count_1h": 4, "avg_tx_90d": 12.5}),
            parse_update(EMBEDDING, "b", NOW, {"embedding": vector}),
        ],
    )

    async def scenario() -> tuple[Any, Any]:
        h = Harness(settings)
        selection = h.resolver.selection("user", ["features", "embedding"])
        batch = await h.resolver.resolve_batch(["a", "b", "c"], selection)
        empty = await h.resolver.resolve_batch([], selection)
        await h.store.close()
        return batch, empty

    batch, empty = run(scenario)
    features, embedding = batch.groups
    assert batch.entity_ids == ("a", "b", "c")
    assert features.sources == (Source.REDIS, Source.DEFAULT, Source.DEFAULT)
    assert embedding.sources == (Source.DEFAULT, Source.REDIS, Source.DEFAULT)
    assert features.columns()["tx_count_1h"] == (
        4,
        DEFAULTS["tx_count_1h"],
        DEFAULTS["tx_count_1h"],
    )
    assert features.columns()["avg_tx_90d"] == (
        12.5,
        DEFAULTS["avg_tx_90d"],
        DEFAULTS["avg_tx_90d"],
    )
    assert features.defaulted[0] == tuple(
        name for name in USER_FEATURES.feature_names if name not in ("tx_count_1h", "avg_tx_90d")
    )
    assert embedding.columns()["embedding"][1] == vector
    assert embedding.stale_ages_s == (None, None, None)
    assert [group.values for group in empty.groups] == [(), ()]
    assert empty.groups[0].columns() == dict.fromkeys(USER_FEATURES.feature_names, ())
    assert empty.groups[1].columns() == {"embedding": ()}


@pytest.mark.parametrize("entities", [1, 10, 100])
@pytest.mark.parametrize("groups", [1, 3])
def test_any_number_of_entities_and_groups_is_one_round_trip(
    redis_url: str, redis_client: redis.Redis, entities: int, groups: int
) -> None:
    upstream = redis_client.connection_pool.connection_kwargs["port"]
    with TcpProxy("127.0.0.1", upstream) as proxy:
        settings = Settings(
            redis_url=proxy.redis_url,
            redis_socket_timeout_ms=5000.0,
            redis_connect_timeout_ms=5000.0,
        )
        write(
            settings,
            [
                parse_update(USER_FEATURES, f"u{i}", NOW, {"is_premium": 1})
                for i in range(0, 100, 2)
            ],
        )

        async def scenario() -> list[Any]:
            h = Harness(settings)
            assert await h.store.ping()  # connection handshake happens here
            proxy.reset_counters()
            redis_client.config_resetstat()
            selection = h.resolver.selection(
                "user", ["features", "recent_items", "embedding"][:groups]
            )
            out = await h.resolver.resolve([f"u{i}" for i in range(entities)], selection)
            await h.store.close()
            return out

        resolved = run(scenario)
        assert proxy.round_trips == 1
    assert len(resolved) == entities
    assert resolved[0].groups["features"].source is Source.REDIS
    # The event times come in the same commands: HMGET ... _event_ms, ZREVRANGE ... WITHSCORES;
    # only an embedding adds one, the GET of its sibling key.
    sent = {name: commands(redis_client, name) for name in ("hmget", "zrevrange", "get")}
    assert sent == {
        "hmget": entities,
        "zrevrange": entities if groups == 3 else 0,
        "get": 2 * entities if groups == 3 else 0,
    }
    assert resolved[0].groups["features"].event_ms == NOW * 1000


def test_cache_hits_skip_redis_until_they_expire(
    settings: Settings, redis_client: redis.Redis
) -> None:
    write(settings, [parse_update(USER_FEATURES, "u1", NOW, {"tx_count_1h": 2})])
    clock = ManualClock()

    async def scenario() -> list[tuple[Source, int]]:
        h = Harness(settings, clock)
        selection = h.resolver.selection("user", ["features"])
        seen = []
        for advance in (0.0, 4.9, 0.2):
            clock.now += advance
            [entity] = await h.resolver.resolve(["u1"], selection)
            seen.append((entity.groups["features"].source, commands(redis_client, "hmget")))
        await h.store.close()
        return seen

    redis_client.config_resetstat()
    assert run(scenario) == [(Source.REDIS, 1), (Source.CACHE, 1), (Source.REDIS, 2)]


def test_a_cache_hit_keeps_values_and_says_which_were_defaulted(settings: Settings) -> None:
    write(settings, [parse_update(USER_FEATURES, "u1", NOW, {"tx_count_1h": 2})])

    async def scenario() -> tuple[GroupResult, GroupResult]:
        h = Harness(settings)
        selection = h.resolver.selection("user", ["features"])
        [first] = await h.resolver.resolve(["u1"], selection)
        [second] = await h.resolver.resolve(["u1"], selection)
        await h.store.close()
        return first.groups["features"], second.groups["features"]

    first, second = run(scenario)
    assert second.source is Source.CACHE
    assert second.values == first.values
    assert second.defaulted == first.defaulted
    with pytest.raises(TypeError):
        second.values["tx_count_1h"] = 99  # type: ignore[index]


def test_each_group_carries_its_event_time_through_the_cache(
    settings: Settings, redis_client: redis.Redis
) -> None:
    write(
        settings,
        [
            parse_update(USER_FEATURES, "u1", NOW - 4000, {"tx_count_1h": 2}),
            parse_update(RECENT_ITEMS, "u1", NOW - 60, {"recent_items": ["i1"]}),
            parse_update(EMBEDDING, "u1", NOW - 30, {"embedding": [0.5] * 16}),
        ],
    )
    redis_client.hset("user:{u2}:features", "tx_count_1h", "3")  # by hand: no _event_ms

    async def scenario() -> list[list[Any]]:
        h = Harness(settings)
        selection = h.resolver.selection("user")
        seen = []
        for _ in range(2):  # from Redis, then from the cache
            batch = await h.resolver.resolve_batch(["u1", "u2"], selection)
            seen.append([(g.sources, g.event_ms, g.ages_s(NOW + 10.0)) for g in batch.groups])
        await h.store.close()
        return seen

    from_redis, from_cache = run(scenario)
    assert [event_ms for _, event_ms, _ in from_redis] == [
        ((NOW - 4000) * 1000, None),
        ((NOW - 60) * 1000, None),
        ((NOW - 30) * 1000, None),
    ]
    assert [ages for _, _, ages in from_redis] == [(4010.0, None), (70.0, None), (40.0, None)]
    assert [sources[0] for sources, _, _ in from_redis] == [Source.REDIS] * 3
    assert [sources for sources, _, _ in from_redis][1:] == [(Source.REDIS, Source.DEFAULT)] * 2
    assert [sources[0] for sources, _, _ in from_cache] == [Source.CACHE] * 3
    assert [(e, a) for _, e, a in from_cache] == [(e, a) for _, e, a in from_redis]


def test_an_event_time_ahead_of_the_clock_is_no_age(settings: Settings) -> None:
    write(settings, [parse_update(USER_FEATURES, "u1", NOW + 60, {"tx_count_1h": 2})])

    async def scenario() -> GroupResult:
        h = Harness(settings)
        [entity] = await h.resolver.resolve(["u1"], h.resolver.selection("user", ["features"]))
        await h.store.close()
        return entity.groups["features"]

    result = run(scenario)
    assert (result.event_ms, result.age_s(NOW)) == ((NOW + 60) * 1000, 0.0)


def test_cached_groups_are_left_out_of_garbage_collection(settings: Settings) -> None:
    """A full collection walks every tracked object: a big cache of them is a long pause."""
    write(
        settings,
        [
            parse_update(USER_FEATURES, "u1", NOW, {"tx_count_1h": 2}),
            parse_update(RECENT_ITEMS, "u1", NOW, {"recent_items": ["i1", "i2"]}),
            parse_update(EMBEDDING, "u1", NOW, {"embedding": [0.5] * 16}),
        ],
    )

    async def scenario() -> list[CachedGroup]:
        h = Harness(settings)
        selection = h.resolver.selection("user")
        await h.resolver.resolve(["u1", "u2"], selection)
        await h.store.close()
        keys = [("user", u, g.name, fields) for u in ("u1", "u2") for g, fields in selection]
        return [entry for entry in map(h.cache.get, keys) if entry is not None]

    cached = run(scenario)
    assert len(cached) == 6
    # Each collection untracks the tuples whose items are all untracked, one level of
    # nesting per pass: an entry gets these passes on its way through the generations.
    for _ in range(3):
        gc.collect()
    assert [entry for entry in cached if gc.is_tracked(entry)] == []


def test_concurrent_misses_for_one_entity_share_one_fetch(
    settings: Settings, redis_client: redis.Redis
) -> None:
    write(settings, [parse_update(USER_FEATURES, "u1", NOW, {"tx_count_1h": 2})])

    async def scenario() -> list[Any]:
        h = Harness(settings)
        selection = h.resolver.selection("user", ["features"])
        assert await h.store.ping()
        redis_client.config_resetstat()
        out = await asyncio.gather(*(h.resolver.resolve(["u1"], selection) for _ in range(5)))
        await h.store.close()
        return out

    results = run(scenario)
    assert commands(redis_client, "hmget") == 1
    assert {r[0].groups["features"].values["tx_count_1h"] for r in results} == {2}


def test_the_same_entity_twice_in_one_call_is_fetched_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> list[Any]:
        h = Harness(settings)
        out = await h.resolver.resolve(["u1", "u1"], h.resolver.selection("user", ["features"]))
        await h.store.close()
        return out

    redis_client.config_resetstat()
    first, second = run(scenario)
    assert commands(redis_client, "hmget") == 1
    assert first.groups == second.groups


def test_a_killed_redis_gives_cache_and_unavailable_never_an_exception(
    own_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # The read before the kill must succeed: 5 s, not the shipped 50 ms.
    settings = Settings(redis_url=own_redis.url, redis_socket_timeout_ms=5000.0)
    write(
        settings, [parse_update(USER_FEATURES, u, NOW, {"tx_count_1h": 5}) for u in ("hot", "cold")]
    )
    clock = ManualClock()

    async def scenario() -> list[dict[str, GroupResult]]:
        h = Harness(settings, clock)
        selection = h.resolver.selection("user", ["features"])
        await h.resolver.resolve(["hot"], selection)
        own_redis.kill()
        answers = []
        for _ in range(5):
            resolved = await h.resolver.resolve(["hot", "cold"], selection)
            answers.append({e.entity_id: e.groups["features"] for e in resolved})
        await h.store.close()
        return answers

    with caplog.at_level(logging.ERROR, logger="test.resolver"):
        answers = run(scenario)
    for answer in answers:
        assert answer["hot"].source is Source.CACHE
        assert answer["hot"].values["tx_count_1h"] == 5
        assert answer["cold"].source is Source.UNAVAILABLE
        assert answer["cold"].degraded is Degraded.STORE_ERROR
        assert dict(answer["cold"].values) == DEFAULTS
    [record] = caplog.records
    # Once per burst, and with the error: the operator learns what failed, not only that.
    assert "redis read failed; falling back: Redis is unreachable" in record.getMessage()


def test_the_error_is_logged_again_after_the_quiet_period(
    own_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=own_redis.url, cache_ttl_s=0)
    own_redis.stop()
    clock = ManualClock()

    async def scenario() -> None:
        h = Harness(settings, clock)
        selection = h.resolver.selection("user", ["features"])
        for advance in (0.0, 1.0, 1.0, 10.0, 1.0):
            clock.now += advance
            await h.resolver.resolve(["u1"], selection)
        await h.store.close()

    with caplog.at_level(logging.ERROR, logger="test.resolver"):
        run(scenario)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "(2 more like it since the last report)" in messages[1]


def test_stage_times_are_recorded(settings: Settings) -> None:
    async def scenario() -> dict[str, float]:
        h = Harness(settings)
        timer = StageTimer()
        await h.resolver.resolve(["u1"], h.resolver.selection("user"), timer)
        await h.store.close()
        return timer.milliseconds()

    assert list(run(scenario)) == ["cache", "redis", "decode"]


def test_bad_ids_are_refused_before_anything_is_sent(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        h = Harness(settings)
        try:
            with pytest.raises(InvalidEntityId, match="brace"):
                await h.resolver.resolve(["u1", "u{2}"], h.resolver.selection("user"))
        finally:
            await h.store.close()

    redis_client.config_resetstat()
    run(scenario)
    assert commands(redis_client, "hmget") == 0


def test_waiters_on_a_fetch_whose_request_was_cancelled_answer_saying_abandoned() -> None:
    """The request reading a key for everyone goes away mid-read (its client hung up): the
    requests waiting on that read answer at once, on defaults, saying why."""
    store = SilentStore()
    tier = Tier(Source.REDIS, store, CircuitBreaker("redis", 5, 1.0))
    cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
    resolver = Resolver(EXAMPLE_REGISTRY, [tier], cache, 5.0)
    selection = resolver.selection("user", ["features"])

    async def scenario() -> GroupResult:
        leader = asyncio.create_task(resolver.resolve(["u1"], selection))
        for _ in range(10):  # a few turns of the loop until the leader's read is sent
            if store.reads:
                break
            await asyncio.sleep(0)
        waiter = asyncio.create_task(resolver.resolve(["u1"], selection))
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        [entity] = await waiter
        return entity.groups["features"]

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        result = runner.run(scenario())
    assert (result.source, result.degraded) == (Source.UNAVAILABLE, Degraded.ABANDONED)
    assert dict(result.values) == DEFAULTS
    assert store.reads == 1, "the waiter shared the leader's read instead of sending its own"
