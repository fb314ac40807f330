"""Write-through, blocking and asyncio, and ``featserve materialize --backing``: the backing
store is written first, Redis second, and a write that fails half-way is safe to run again.

Expectations are the values the tests wrote, read back with plain clients: redis-py
``HGET`` for Redis, ``sqlite3`` and ``json`` for the SQLite file.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis

from features.errors import StoreUnavailable
from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import FeatureUpdate, WriteOutcome
from features.stores.factory import async_backing_store, open_backing_store
from features.stores.redis import RedisStore, async_redis_store, sync_client
from features.stores.write_through import AsyncWriteThrough, WriteThrough
from service.cli import main
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis, free_port
from tests.support.moto_server import aws_env

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
NOW = int(time.time())
"""Writes are dated around now: both stores count TTLs from the event time."""

Writer = Callable[[Sequence[FeatureUpdate]], list[WriteOutcome]]


def held_in_sqlite(path: Path, entity_id: str) -> dict[str, Any] | None:
    """The values the SQLite file holds for an entity's ``features``, read with plain sqlite3."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT vals FROM feature_groups WHERE key = ?", (f"user:{{{entity_id}}}:features",)
        ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def held_in_redis(url: str, entity_id: str, field: str) -> bytes | None:
    with redis.Redis.from_url(url) as client:
        value: bytes | None = client.hget(f"user:{{{entity_id}}}:features", field)
        return value


def write_through(
    kind: str, redis_url: str, backing_spec: str
) -> tuple[Writer, Callable[[], None]]:
    """A write-through store of ``kind`` (blocking or asyncio) over Redis and the backing store
    ``backing_spec`` names, driven synchronously, and how to close it."""
    settings = Settings(redis_url=redis_url, redis_write_timeout_ms=5000.0)
    if kind == "sync":
        online = RedisStore(sync_client(settings, for_writes=True))
        backing = open_backing_store(backing_spec)
        through = WriteThrough(online, backing)

        def close_sync() -> None:
            online.close()
            backing.close()

        return through.write, close_sync
    loop = asyncio.new_event_loop()
    async_online = async_redis_store(settings, for_writes=True)
    async_backing = async_backing_store(backing_spec)
    async_through = AsyncWriteThrough(async_online, async_backing)

    def write(updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        return loop.run_until_complete(async_through.write(updates))

    def close_async() -> None:
        loop.run_until_complete(async_online.close())
        loop.run_until_complete(async_backing.close())
        loop.close()

    return write, close_async


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """``WriteThrough`` (materialize, rewarm) and ``AsyncWriteThrough`` (``/push``)."""
    kind: str = request.param
    return kind


def test_a_write_lands_in_both_stores(kind: str, own_redis: LocalRedis, tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    write, close = write_through(kind, own_redis.url, f"sqlite:{path}")
    try:
        outcomes = write([parse_update(FEATURES, "w1", NOW, {"tx_count_1h": 4, "tx_sum_1h": 9.5})])
    finally:
        close()
    assert outcomes == [WriteOutcome(frozenset({"tx_count_1h", "tx_sum_1h"}))]
    assert held_in_sqlite(path, "w1") == {"tx_count_1h": 4, "tx_sum_1h": 9.5}
    assert held_in_redis(own_redis.url, "w1", "tx_sum_1h") == b"9.5"


def test_a_backing_store_that_fails_first_keeps_the_write_from_redis(
    kind: str, own_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_env(monkeypatch, f"http://127.0.0.1:{free_port()}")  # a DynamoDB nobody serves
    write, close = write_through(kind, own_redis.url, "dynamodb:features")
    try:
        with pytest.raises(StoreUnavailable):
            write([parse_update(FEATURES, "w2", NOW, {"tx_count_1h": 1})])
    finally:
        close()
    assert held_in_redis(own_redis.url, "w2", "tx_count_1h") is None


def test_a_write_redis_fails_after_the_backing_store_took_it_is_safe_to_run_again(
    kind: str, own_redis: LocalRedis, tmp_path: Path
) -> None:
    path = tmp_path / "backing.sqlite3"
    first = parse_update(FEATURES, "w3", NOW - 10, {"tx_count_1h": 1, "avg_tx_90d": 2.5})
    newer = parse_update(FEATURES, "w3", NOW, {"tx_count_1h": 2})
    write, close = write_through(kind, own_redis.url, f"sqlite:{path}")
    try:
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            write([first])
        # Half-way: the backing store has it, Redis has not.
        assert held_in_sqlite(path, "w3") == {"tx_count_1h": 1, "avg_tx_90d": 2.5}
        own_redis.start()
        assert write([newer]) == [WriteOutcome(frozenset({"tx_count_1h"}))]
        # Sent again after a newer value landed: what is older changes nothing, the rest lands.
        assert write([first]) == [WriteOutcome(frozenset({"avg_tx_90d"}))]
    finally:
        close()
    assert held_in_sqlite(path, "w3") == {"tx_count_1h": 2, "avg_tx_90d": 2.5}
    assert held_in_redis(own_redis.url, "w3", "tx_count_1h") == b"2"
    assert held_in_redis(own_redis.url, "w3", "avg_tx_90d") == b"2.5"


def test_materialize_with_backing_writes_the_table_to_both(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    table = tmp_path / "rows.csv"
    rows: list[dict[str, Any]] = [
        {"entity_id": f"m{i}", "event_timestamp": NOW - 60, "tx_count_1h": i, "tx_sum_1h": i / 4}
        for i in range(1, 6)
    ]
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path = tmp_path / "backing.sqlite3"
    argv = ["materialize", str(table), "--redis-url", own_redis.url, "--backing", f"sqlite:{path}"]
    assert main(argv) == 0
    for row in rows:
        values = {"tx_count_1h": row["tx_count_1h"], "tx_sum_1h": row["tx_sum_1h"]}
        assert held_in_sqlite(path, row["entity_id"]) == values
        assert held_in_redis(own_redis.url, row["entity_id"], "tx_count_1h") == (
            str(row["tx_count_1h"]).encode()
        )
