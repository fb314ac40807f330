"""A push's accounting, as ``materialize`` keeps a table's: every update written, stale,
expired or refused, against a real Redis."""

from __future__ import annotations

import asyncio
import time

import redis

from features.ingest.push import (
    PushedUpdate,
    PushRefusal,
    PushResult,
    parse_pushed,
    write_pushed,
)
from features.settings import Settings
from features.stores.redis import async_redis_store
from service.harness.example import EXAMPLE_REGISTRY

NOW_S = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
NOW_MS = NOW_S * 1000


def pushed(entity_id: str, at_s: float, **values: float) -> PushedUpdate:
    return PushedUpdate("user", "features", entity_id, at_s, values)


def test_every_update_of_a_push_is_written_stale_expired_or_refused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.hset("user:{u2}:features", mapping={"tx_count_1h": 9, "_event_ms": NOW_MS})
    updates = [
        pushed("u1", NOW_S, tx_count_1h=1),
        pushed("u2", NOW_S - 60, tx_count_1h=2),  # older than what Redis holds
        pushed("u3", NOW_S - 30 * 86400, tx_count_1h=3),  # past the group's TTL
    ]
    parsed, refused = parse_pushed(updates, EXAMPLE_REGISTRY, NOW_MS, 0)
    assert refused == []

    async def scenario() -> PushResult:
        store = async_redis_store(settings)
        try:
            return await write_pushed(parsed, store, NOW_MS)
        finally:
            await store.close()

    result = asyncio.run(scenario())
    assert (result.written, result.stale, result.expired, result.refused) == (1, (1,), (2,), ())
    assert redis_client.hget("user:{u1}:features", "tx_count_1h") == b"1"
    assert redis_client.hget("user:{u2}:features", "tx_count_1h") == b"9"
    assert not redis_client.exists("user:{u3}:features")


def test_a_push_with_a_bad_update_names_each_by_index() -> None:
    updates = [
        pushed("u1", NOW_S, tx_count_1h=1),
        pushed("u2", NOW_S, tx_count_1h=-1),
        PushedUpdate("user", "nope", "u3", NOW_S, {"x": 1}),
        pushed("u4", NOW_S + 3600, tx_count_1h=1),
    ]
    _, refused = parse_pushed(updates, EXAMPLE_REGISTRY, NOW_MS, 0)
    assert [(r.index, r.field) for r in refused] == [
        (1, "tx_count_1h"),
        (2, "group"),
        (3, "event_timestamp"),
    ]
    assert isinstance(refused[0], PushRefusal)
    assert refused[1].as_dict()["entity_id"] == "u3"
