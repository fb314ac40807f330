"""The Redis stores behind Sentinel: a primary, two replicas and three real sentinels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import redis

from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import FailedRead, ReadAnswer, ReadRequest, event_ms_of
from features.stores.factory import async_online_store, open_online_store
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.local_sentinel import MASTER_NAME, LocalSentinels

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
USERS = [f"u{i}" for i in range(20)]


@pytest.fixture(scope="module")
def sentinels() -> Iterator[LocalSentinels]:
    with LocalSentinels() as sentinels:
        yield sentinels


@pytest.fixture
def settings(sentinels: LocalSentinels) -> Settings:
    with closing(redis.Redis(port=sentinels.primary().port)) as client:
        client.flushall()
    return Settings(
        redis_url="redis://ignored.example:1/0",
        redis_mode="sentinel",
        sentinels=sentinels.sentinel_addresses,
        sentinel_master=MASTER_NAME,
        redis_socket_timeout_ms=5000.0,
        redis_connect_timeout_ms=5000.0,
    )


def reads() -> list[ReadRequest]:
    return [ReadRequest(user, FEATURES, ("tx_count_1h",)) for user in USERS]


def write_users(settings: Settings) -> None:
    store = open_online_store(settings, for_writes=True)
    try:
        updates = [parse_update(FEATURES, u, NOW, {"tx_count_1h": i}) for i, u in enumerate(USERS)]
        assert [outcome.applied for outcome in store.write(updates)] == [True] * len(USERS)
    finally:
        store.close()


def read_answers(settings: Settings) -> list[ReadAnswer]:
    async def scenario() -> list[ReadAnswer]:
        store = async_online_store(settings)
        try:
            return list(await store.read(reads()))
        finally:
            await store.close()

    return asyncio.run(scenario())


def read_async(settings: Settings) -> list[Any]:
    return [as_dict(answer) for answer in read_answers(settings)]


def as_dict(answer: ReadAnswer) -> dict[str, Any] | None:
    assert not isinstance(answer, FailedRead), answer
    return dict(answer) if answer else None


def hmget_calls(node: LocalRedis) -> int:
    with closing(redis.Redis(port=node.port)) as client:
        entry = client.info("commandstats").get("cmdstat_hmget")
    return int(entry["calls"]) if entry else 0


def reset_stats(sentinels: LocalSentinels) -> None:
    for node in sentinels.servers:
        with closing(redis.Redis(port=node.port)) as client:
            client.config_resetstat()


def test_reads_and_writes_go_to_the_primary_the_sentinels_name(
    sentinels: LocalSentinels, settings: Settings
) -> None:
    write_users(settings)
    reset_stats(sentinels)
    assert read_async(settings) == [{"tx_count_1h": i} for i in range(len(USERS))]
    primary = sentinels.primary()
    assert hmget_calls(primary) == len(USERS)
    assert all(hmget_calls(node) == 0 for node in sentinels.servers if node != primary)


def test_answers_carry_their_event_time_from_the_same_commands(
    sentinels: LocalSentinels, settings: Settings
) -> None:
    write_users(settings)
    reset_stats(sentinels)
    answers = read_answers(settings)
    assert {event_ms_of(answer) for answer in answers if answer} == {NOW * 1000}
    assert hmget_calls(sentinels.primary()) == len(USERS)


def test_replica_reads_go_to_a_replica(sentinels: LocalSentinels, settings: Settings) -> None:
    write_users(settings)
    with closing(redis.Redis(port=sentinels.primary().port)) as client:
        assert client.execute_command("WAIT", 2, 5000) == 2
    reset_stats(sentinels)
    replicas = settings.model_copy(update={"read_from_replicas": True})
    assert read_async(replicas) == [{"tx_count_1h": i} for i in range(len(USERS))]
    assert hmget_calls(sentinels.primary()) == 0
    assert sum(hmget_calls(node) for node in sentinels.servers) == len(USERS)
