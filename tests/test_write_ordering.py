"""Writes on a real Redis never regress: older values are skipped by the server itself,
value by value."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import ReadRequest, WriteOutcome
from features.stores.redis import RedisStore, sync_client
from features.stores.redis_scripts import HASH_WRITE
from service.harness.example import EXAMPLE_REGISTRY

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings, for_writes=True))
    yield store
    store.close()


LANDED = WriteOutcome(frozenset({"tx_count_1h"}))
STALE = WriteOutcome()


def test_an_older_hash_write_is_skipped_and_a_newer_one_applied(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    assert store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 5})]) == [LANDED]
    assert store.write([parse_update(FEATURES, "u1", NOW - 1, {"tx_count_1h": 1})]) == [STALE]
    assert redis_client.hget("user:{u1}:features", "tx_count_1h") == b"5"
    assert store.write([parse_update(FEATURES, "u1", NOW + 1, {"tx_count_1h": 9})]) == [LANDED]
    assert redis_client.hget("user:{u1}:features", "tx_count_1h") == b"9"


def test_fields_merge_one_by_one_whatever_the_order(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    # The example: two rows of one entity, each with a field the other lacks.
    first = parse_update(FEATURES, "w001", NOW - 120, {"tx_count_1h": 5})
    second = parse_update(FEATURES, "w001", NOW - 60, {"tx_sum_1h": 10.5})
    assert store.write([second, first]) == [
        WriteOutcome(frozenset({"tx_sum_1h"})),
        WriteOutcome(frozenset({"tx_count_1h"})),
    ]
    [values] = store.read([ReadRequest("w001", FEATURES, ("tx_count_1h", "tx_sum_1h"))])
    assert values == {"tx_count_1h": 5, "tx_sum_1h": 10.5}
    # An update newer for one field and older for another lands only the newer field.
    mixed = parse_update(FEATURES, "w001", NOW - 90, {"tx_count_1h": 7, "tx_sum_1h": 1.0})
    assert store.write([mixed]) == [WriteOutcome(frozenset({"tx_count_1h"}))]
    held = redis_client.hgetall("user:{w001}:features")
    assert held == {
        b"tx_count_1h": b"7",
        b"tx_sum_1h": b"10.5",
        b"_event_ms": b"%d" % ((NOW - 60) * 1000),
        b"_event_ms:tx_count_1h": b"%d" % ((NOW - 90) * 1000),
    }


def test_a_field_time_is_kept_only_while_it_differs_from_the_group_time(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    store.write([parse_update(FEATURES, "u1", NOW - 60, {"tx_count_1h": 1, "tx_sum_1h": 1.0})])
    store.write([parse_update(FEATURES, "u1", NOW - 30, {"tx_sum_1h": 2.0})])
    assert redis_client.hget("user:{u1}:features", "_event_ms:tx_count_1h") is not None
    store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 3, "tx_sum_1h": 3.0})])
    assert redis_client.hgetall("user:{u1}:features") == {
        b"tx_count_1h": b"3",
        b"tx_sum_1h": b"3.0",
        b"_event_ms": b"%d" % (NOW * 1000),
    }


def test_a_hash_written_by_hand_is_older_than_any_event(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    redis_client.hset("user:{u1}:features", mapping={"tx_count_1h": "4", "is_premium": "1"})
    [values] = store.read([ReadRequest("u1", FEATURES, ("tx_count_1h", "is_premium"))])
    assert values == {"tx_count_1h": 4, "is_premium": 1}
    assert store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 9})]) == [LANDED]
    [values] = store.read([ReadRequest("u1", FEATURES, ("tx_count_1h", "is_premium"))])
    assert values == {"tx_count_1h": 9, "is_premium": 1}
    # The field set by hand keeps its value, dated older than any event, and gets the TTL.
    assert redis_client.hget("user:{u1}:features", "_event_ms:is_premium") == b"0"
    assert redis_client.pttl("user:{u1}:features") > 0


def test_rewriting_the_same_event_is_harmless(store: RedisStore, redis_client: redis.Redis) -> None:
    update = parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 5, "tx_sum_1h": 2.5})
    store.write([update])
    before = redis_client.hgetall("user:{u1}:features")
    assert store.write([update]) == [WriteOutcome(frozenset({"tx_count_1h", "tx_sum_1h"}))]
    assert redis_client.hgetall("user:{u1}:features") == before


def test_an_older_embedding_is_skipped(store: RedisStore, redis_client: redis.Redis) -> None:
    store.write([parse_update(EMBEDDING, "u1", NOW, {"embedding": [1.0] * 16})])
    assert store.write([parse_update(EMBEDDING, "u1", NOW - 60, {"embedding": [2.0] * 16})]) == [
        STALE
    ]
    [values] = store.read([ReadRequest("u1", EMBEDDING, EMBEDDING.feature_names)])
    assert values == {"embedding": (1.0,) * 16}
    assert redis_client.pttl("user:{u1}:embedding:_event_ms") > 0


def test_replayed_old_items_never_displace_newer_ones(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    newest = [parse_update(RECENT, "u1", NOW + i, {"recent_items": [f"new{i}"]}) for i in range(10)]
    oldest = [
        parse_update(RECENT, "u1", NOW - 1000 + i, {"recent_items": [f"old{i}"]}) for i in range(5)
    ]
    replay_of_a_new_item_with_an_old_time = parse_update(
        RECENT, "u1", NOW - 5000, {"recent_items": ["new9"]}
    )
    store.write(newest)
    store.write([*oldest, replay_of_a_new_item_with_an_old_time])
    assert redis_client.zrevrange("user:{u1}:recent_items", 0, -1, withscores=True) == [
        (f"new{i}".encode(), float(NOW + i)) for i in range(9, -1, -1)
    ]


def test_racing_writers_end_at_the_newest_event(
    settings: Settings, redis_client: redis.Redis
) -> None:
    events = list(range(200))
    orders = [random.Random(seed).sample(events, len(events)) for seed in (1, 2)]
    start = threading.Barrier(2)

    def writer(order: list[int]) -> None:
        store = RedisStore(sync_client(settings, for_writes=True))
        start.wait()
        for event in order:
            store.write([parse_update(FEATURES, "u1", NOW + event, {"tx_count_24h": event})])
        store.close()

    threads = [threading.Thread(target=writer, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redis_client.hget("user:{u1}:features", "tx_count_24h") == b"199"
    assert redis_client.hget("user:{u1}:features", "_event_ms") == b"%d" % ((NOW + 199) * 1000)


def test_writes_survive_a_flushed_script_cache(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
    redis_client.script_flush()
    assert store.write([parse_update(FEATURES, "u2", NOW, {"tx_count_1h": 2})]) == [LANDED]
    assert redis_client.hget("user:{u2}:features", "tx_count_1h") == b"2"
    # Sent again with EVAL, which cached the script on the node that lacked it.
    assert redis_client.script_exists(HASH_WRITE.sha) == [True]


def test_a_chunk_sends_its_script_calls_and_nothing_else(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    store.write([parse_update(FEATURES, "warm", NOW, {"tx_count_1h": 1})])  # loads the scripts
    redis_client.config_resetstat()
    store.write([parse_update(FEATURES, f"u{i}", NOW, {"tx_count_1h": i}) for i in range(500)])
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 500
    assert "cmdstat_script|exists" not in stats and "cmdstat_script" not in stats
