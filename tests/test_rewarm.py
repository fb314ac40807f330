"""Rewarm from a SQLite backing store into a real, empty Redis."""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from features.ingest.rewarm import RewarmReport, rewarm
from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import FeatureUpdate, ReadRequest
from features.stores.dynamodb import DynamoDbStore, dynamodb_client
from features.stores.redis import RedisStore, sync_client
from features.stores.sqlite import SqliteStore
from service.cli.rewarm import register
from service.harness.example import EXAMPLE_REGISTRY
from tests.support.redis_state import redis_state

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
GROUPS = (FEATURES, RECENT, EMBEDDING)
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
USERS = 25


def at_now() -> float:
    return float(NOW)


def held_updates(now: int, users: int = USERS) -> list[FeatureUpdate]:
    """Every group of ``users`` users, written a minute before ``now``."""
    when = now - 60
    return [
        update
        for i in range(users)
        for update in (
            parse_update(FEATURES, f"u{i}", when, {"tx_count_1h": i, "avg_tx_90d": i / 4}),
            parse_update(RECENT, f"u{i}", when, {"recent_items": [f"a{i}", f"b{i}"]}),
            parse_update(EMBEDDING, f"u{i}", when, {"embedding": [i / 8] * 16}),
        )
    ]


def assert_holds_what_was_written(client: redis.Redis, users: int) -> None:
    """Redis holds ``held_updates``' values, read back with plain redis-py rather than through
    another store's decoder (a decoding slip shared by both stores would hide there)."""
    for i in range(users):
        count, average = client.hmget(f"user:{{u{i}}}:features", "tx_count_1h", "avg_tx_90d")
        assert isinstance(count, bytes) and isinstance(average, bytes), (count, average)
        assert (int(count), float(average)) == (i, i / 4)
        items = client.zrange(f"user:{{u{i}}}:recent_items", 0, -1)
        assert sorted(items) == [f"a{i}".encode(), f"b{i}".encode()]
        vector = client.get(f"user:{{u{i}}}:embedding")
        assert isinstance(vector, bytes) and struct.unpack("<16f", vector) == (i / 8,) * 16


@pytest.fixture
def backing_path(tmp_path: Path) -> Path:
    return tmp_path / "backing.sqlite3"


@pytest.fixture
def backing(backing_path: Path) -> Iterator[SqliteStore]:
    """The backing store, on a clock pinned at ``NOW``, as ``rewarm`` is in these tests."""
    store = SqliteStore(backing_path, clock=at_now)
    yield store
    store.close()


@pytest.fixture
def target(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings, for_writes=True))
    yield store
    store.close()


def test_rewarm_fills_an_empty_redis_with_what_the_backing_store_holds(
    backing: SqliteStore, target: RedisStore, redis_client: redis.Redis
) -> None:
    backing.write(held_updates(NOW))
    progress: list[int] = []
    report = rewarm(
        backing, target, GROUPS, chunk_size=10, on_progress=progress.append, clock=at_now
    )
    assert report == RewarmReport(
        read=3 * USERS,
        written=3 * USERS,
        stale=0,
        expired=0,
        rejected=0,
        elapsed_s=report.elapsed_s,
    )
    assert sum(progress) == 3 * USERS and max(progress) == 10
    assert_holds_what_was_written(redis_client, USERS)
    for group in GROUPS:
        # The TTL counts from the event time, a minute before NOW, as in the backing store.
        left_ms = ((NOW - 60) + group.ttl.total_seconds() - time.time()) * 1000
        for i in range(USERS):
            pttl = redis_client.pttl(f"user:{{u{i}}}:{group.name}")
            assert left_ms - 5_000 < pttl <= left_ms + 1  # + 1: whole milliseconds


def test_rewarm_never_rolls_back_a_newer_value_in_redis(
    backing: SqliteStore, target: RedisStore
) -> None:
    backing.write(held_updates(NOW))
    target.write(
        [
            parse_update(FEATURES, "u3", NOW, {"tx_count_1h": 99}),
            parse_update(FEATURES, "u4", NOW, {"tx_count_1h": 98, "avg_tx_90d": 9.5}),
        ]
    )
    report = rewarm(backing, target, GROUPS, clock=at_now)
    assert (report.written, report.stale) == (3 * USERS - 1, 1)
    # u3: the backing store's older tx_count_1h is skipped; its avg_tx_90d, which Redis
    # lacked, lands.  u4: Redis holds both newer; nothing lands.
    u3, u4 = target.read(
        [ReadRequest(u, FEATURES, ("tx_count_1h", "avg_tx_90d")) for u in ("u3", "u4")]
    )
    assert u3 == {"tx_count_1h": 99, "avg_tx_90d": 0.75}
    assert u4 == {"tx_count_1h": 98, "avg_tx_90d": 9.5}


def test_rewarm_restores_each_field_at_its_own_event_time(
    backing: SqliteStore, target: RedisStore
) -> None:
    backing.write(
        [
            parse_update(FEATURES, "u1", NOW - 120, {"tx_count_1h": 5}),
            parse_update(FEATURES, "u1", NOW - 60, {"tx_sum_1h": 10.5}),
        ]
    )
    rewarm(backing, target, [FEATURES], clock=at_now)
    # Redis got tx_count_1h at its own time, so a write between the two times lands on it.
    target.write([parse_update(FEATURES, "u1", NOW - 90, {"tx_count_1h": 7, "tx_sum_1h": 1.0})])
    [values] = target.read([ReadRequest("u1", FEATURES, ("tx_count_1h", "tx_sum_1h"))])
    assert values == {"tx_count_1h": 7, "tx_sum_1h": 10.5}


def test_a_second_rewarm_changes_nothing(
    backing: SqliteStore, target: RedisStore, redis_client: redis.Redis
) -> None:
    backing.write(held_updates(NOW))
    rewarm(backing, target, GROUPS, clock=at_now)
    before = redis_state(redis_client)
    rewarm(backing, target, GROUPS, clock=at_now)
    assert redis_state(redis_client) == before
    assert len(before) == 3 * USERS + USERS  # each embedding has its event-time key


def test_groups_older_than_their_ttl_are_not_rewarmed(
    backing: SqliteStore, target: RedisStore, redis_client: redis.Redis
) -> None:
    hours_ago = NOW - 3 * 3600
    backing.write(
        [
            parse_update(FEATURES, "old", hours_ago, {"tx_count_1h": 1}),
            parse_update(EMBEDDING, "old", hours_ago, {"embedding": [1.0] * 16}),
        ]
    )
    report = rewarm(backing, target, GROUPS, clock=at_now)
    assert (report.read, report.written, report.expired) == (2, 1, 1)
    assert redis_client.exists("user:{old}:features") == 0
    assert redis_client.exists("user:{old}:embedding") == 1


def test_rewarm_writes_exactly_the_groups_the_backing_store_still_serves(
    backing_path: Path, target: RedisStore
) -> None:
    # On the real clock, as Redis expires keys: ten minutes inside FEATURES' TTL, at it and
    # just past it.
    ttl_s = FEATURES.ttl.total_seconds()
    now = time.time()
    ages_s = {"inside": ttl_s - 600, "at": ttl_s, "past": ttl_s + 1}
    with closing(SqliteStore(backing_path)) as backing:
        backing.write(
            [
                parse_update(FEATURES, name, now - age, {"tx_count_1h": 1})
                for name, age in ages_s.items()
            ]
        )
        requests = [ReadRequest(name, FEATURES, ("tx_count_1h",)) for name in ages_s]
        served = backing.read(requests)
        assert served == [{"tx_count_1h": 1}, None, None]
        report = rewarm(backing, target, [FEATURES])
    assert (report.written, report.expired) == (1, 2)
    assert target.read(requests) == served


def test_only_the_named_groups_are_rewarmed(
    backing: SqliteStore, target: RedisStore, redis_client: redis.Redis
) -> None:
    backing.write(held_updates(NOW, users=3))
    report = rewarm(backing, target, [RECENT], clock=at_now)
    assert report.read == 3
    assert sorted(redis_client.keys()) == [f"user:{{u{i}}}:recent_items".encode() for i in range(3)]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="featserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rewarm", *argv])
    code: int = args.run(args)
    return code


def test_the_command_rewarms_redis(
    backing_path: Path, redis_url: str, target: RedisStore, redis_client: redis.Redis
) -> None:
    # The command and this store run on the real clock; an hour of slack past the TTL.
    now = int(time.time())
    expired = parse_update(FEATURES, "gone", now - 3 * 3600, {"tx_count_1h": 1})
    with closing(SqliteStore(backing_path)) as backing:
        backing.write([*held_updates(now, users=5), expired])
        assert run_cli("--backing", f"sqlite:{backing_path}", "--redis-url", redis_url) == 0
    assert_holds_what_was_written(redis_client, 5)
    assert target.read([ReadRequest("gone", FEATURES, ("tx_count_1h",))]) == [None]


@pytest.mark.parametrize(
    "argv",
    [
        ["--group", "user:nope"],
        ["--group", "features"],
        ["--backing", "postgres:db"],
        ["--chunk-size", "0"],
    ],
)
def test_the_command_refuses_bad_arguments(
    argv: list[str], backing_path: Path, redis_url: str
) -> None:
    assert run_cli("--backing", f"sqlite:{backing_path}", "--redis-url", redis_url, *argv) == 2


def test_the_command_reports_a_backing_store_it_cannot_open(tmp_path: Path, redis_url: str) -> None:
    where = f"sqlite:{tmp_path / 'missing' / 'backing.sqlite3'}"
    assert run_cli("--backing", where, "--redis-url", redis_url) == 3


def test_a_group_redis_cannot_take_is_counted_and_the_rest_rewarmed(
    backing_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    with closing(SqliteStore(backing_path)) as backing:
        backing.write(held_updates(now, users=3))
    redis_client.set("user:{u1}:features", "a string")
    assert run_cli("--backing", f"sqlite:{backing_path}", "--redis-url", redis_url) == 1
    assert redis_client.get("user:{u1}:features") == b"a string"
    assert redis_client.hget("user:{u2}:features", "tx_count_1h") == b"2"


def test_the_command_rewarms_redis_from_dynamodb(
    dynamodb_table: str, redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    vector = [0.5, -1.25, 2.0, 0.0] * 4
    with closing(DynamoDbStore(dynamodb_table, dynamodb_client())) as backing:
        backing.write(
            [
                parse_update(FEATURES, "d1", now - 60, {"tx_count_1h": 7, "avg_tx_90d": 12.5}),
                parse_update(FEATURES, "d1", now - 30, {"tx_count_1h": 8}),
                parse_update(RECENT, "d1", now - 20, {"recent_items": ["i1"]}),
                parse_update(RECENT, "d1", now - 10, {"recent_items": ["i2"]}),
                parse_update(EMBEDDING, "d1", now - 60, {"embedding": vector}),
                parse_update(FEATURES, "gone", now - 3 * 3600, {"tx_count_1h": 1}),
            ]
        )
    assert run_cli("--backing", f"dynamodb:{dynamodb_table}", "--redis-url", redis_url) == 0
    # What the test wrote, read back with redis-py: each field at its own event time.
    assert redis_client.hgetall("user:{d1}:features") == {
        b"tx_count_1h": b"8",
        b"avg_tx_90d": b"12.5",
        b"_event_ms": str((now - 30) * 1000).encode(),
        b"_event_ms:avg_tx_90d": str((now - 60) * 1000).encode(),
    }
    assert redis_client.zrevrange("user:{d1}:recent_items", 0, -1, withscores=True) == [
        (b"i2", float(now - 10)),
        (b"i1", float(now - 20)),
    ]
    assert redis_client.get("user:{d1}:embedding") == struct.pack("<16f", *vector)
    assert redis_client.exists("user:{gone}:features") == 0
