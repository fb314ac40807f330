"""The backing stores against real servers: one behaviour suite for SQLite and DynamoDB.

DynamoDB is a moto server started in a subprocess on a free loopback port;
every test gets a table of its own.  Reads are compared with what the Redis
store returns for the same writes, since the resolver must not be able to
tell the tiers apart.  Stores run on a clock pinned at ``NOW``, the time
the test data is written around, unless a test moves it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.ingest.updates import parse_update
from features.registry import Feature, FeatureGroup, Structure
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, GroupResult, Resolver
from features.serving.tiers import backing_tier, redis_tier
from features.settings import Settings
from features.sources import Source
from features.stores.backing import AsyncBackingStore, BackingStore
from features.stores.base import (
    FailedRead,
    FeatureUpdate,
    ReadAnswer,
    ReadRequest,
    StoredValues,
    WriteOutcome,
    event_ms_of,
)
from features.stores.dynamodb import (
    DynamoDbStore,
    dynamodb_client,
)
from features.stores.factory import async_backing_store, open_backing_store
from features.stores.redis import RedisStore, async_redis_store, sync_client
from features.stores.sqlite import SqliteStore
from features.stores.write_rules import expires_at_ms, is_live, oldest_live_ms
from features.stores.write_through import WriteThrough
from features.timing import StageTimer
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import free_port
from tests.support.clock import ManualClock
from tests.support.moto_server import aws_env

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""


@pytest.fixture(params=["sqlite", "dynamodb"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which backing store implementation a test runs against."""
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    """The stores' clock, at ``NOW`` until the test moves it."""
    return ManualClock(NOW)


@pytest.fixture
def open_backing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, clock: ManualClock
) -> Iterator[Callable[[], BackingStore]]:
    """Opens a store of ``kind`` on ``clock``; every store it opens shares one database or table."""
    opened: list[BackingStore] = []

    def open_store() -> BackingStore:
        if kind == "sqlite":
            store: BackingStore = SqliteStore(tmp_path / "backing.sqlite3", clock=clock)
        else:
            table = request.getfixturevalue("dynamodb_table")
            store = DynamoDbStore(table, dynamodb_client(), clock=clock)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def backing(open_backing: Callable[[], BackingStore]) -> BackingStore:
    return open_backing()


@pytest.fixture
def redis_store(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings, for_writes=True))
    yield store
    store.close()


def ttl_s(group: FeatureGroup) -> int:
    return int(group.ttl.total_seconds())


def every_group(*entity_ids: str) -> list[ReadRequest]:
    return [
        ReadRequest(entity_id, group, group.feature_names)
        for entity_id in entity_ids
        for group in (FEATURES, RECENT, EMBEDDING)
    ]


def applied(outcomes: Sequence[WriteOutcome]) -> list[bool]:
    """Which updates landed at all."""
    return [outcome.applied for outcome in outcomes]


def exact(answers: Sequence[ReadAnswer]) -> list[Any]:
    """Answers with every value's type, so 3 and 3.0 differ, and the event time they carry."""
    return [
        values
        if values is None or isinstance(values, FailedRead)
        else [(name, type(v), v) for name, v in values.items()] + [event_ms_of(values)]
        for values in answers
    ]


def test_round_trip_of_every_structure_matches_redis(
    backing: BackingStore, redis_store: RedisStore
) -> None:
    updates = [
        parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 3, "tx_sum_1h": 12.5, "avg_tx_90d": 0.1}),
        parse_update(FEATURES, "u1", NOW + 5, {"tx_count_1h": 4, "is_premium": 1}),
        parse_update(FEATURES, "u2", NOW, {"tx_sum_24h": 1e-7, "last_login_ts": NOW}),
        *(
            parse_update(RECENT, "u1", NOW + i, {"recent_items": [f"i{i % 7}", f"j{i}"]})
            for i in range(15)
        ),
        parse_update(RECENT, "u1", NOW - 99, {"recent_items": ["too-old-to-keep"]}),
        parse_update(RECENT, "u2", NOW, {"recent_items": ["b", "a", "c"]}),
        parse_update(EMBEDDING, "u1", NOW, {"embedding": [i / 3 for i in range(16)]}),
        parse_update(EMBEDDING, "u1", NOW - 1, {"embedding": [9.0] * 16}),
    ]
    assert backing.write(updates) == redis_store.write(updates)
    requests = [
        *every_group("u1", "u2", "u3"),
        ReadRequest("u1", FEATURES, ("is_premium", "tx_count_24h", "tx_count_1h")),
        ReadRequest("u2", FEATURES, ("tx_count_24h",)),
    ]
    answers = backing.read(requests)
    assert exact(answers) == exact(redis_store.read(requests))
    assert answers[0] == {"tx_count_1h": 4, "tx_sum_1h": 12.5, "avg_tx_90d": 0.1, "is_premium": 1}
    newest = ("j14", "i0", "j13", "i6", "j12", "i5", "j11", "i4", "j10", "i3")
    assert answers[1] == {"recent_items": newest}
    assert answers[4] == {"recent_items": ("c", "b", "a")}
    # The event time beside the values: a hash's newest, a sorted set's newest member's, the
    # embedding's kept write (the older one was skipped); nothing held, nothing to date.
    assert [event_ms_of(answer) for answer in answers[:6]] == [
        (NOW + 5) * 1000,
        (NOW + 14) * 1000,
        NOW * 1000,
        NOW * 1000,
        NOW * 1000,
        None,
    ]


def test_nothing_held_reads_none(backing: BackingStore) -> None:
    backing.write([parse_update(EMBEDDING, "u2", NOW, {"embedding": [1.0] * 16})])
    assert backing.read(every_group("u1", "u2")) == [None] * 5 + [{"embedding": (1.0,) * 16}]
    assert backing.read([]) == []


def test_a_partial_hash_update_keeps_the_other_fields(backing: BackingStore) -> None:
    backing.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1, "tx_sum_1h": 2.0})])
    backing.write([parse_update(FEATURES, "u1", NOW + 1, {"tx_sum_1h": 5.0, "is_premium": 1})])
    [values] = backing.read([ReadRequest("u1", FEATURES, FEATURES.feature_names)])
    assert values == {"tx_count_1h": 1, "tx_sum_1h": 5.0, "is_premium": 1}


@pytest.mark.parametrize(
    ("group", "first", "second"),
    [
        (FEATURES, {"tx_count_1h": 5}, {"tx_count_1h": 9}),
        (EMBEDDING, {"embedding": [1.0] * 16}, {"embedding": [2.0] * 16}),
    ],
    ids=["hash", "string"],
)
def test_older_writes_are_skipped_equal_and_newer_applied(
    backing: BackingStore, group: Any, first: dict[str, Any], second: dict[str, Any]
) -> None:
    request = [ReadRequest("u1", group, group.feature_names)]
    assert applied(backing.write([parse_update(group, "u1", NOW, first)])) == [True]
    expected = backing.read(request)
    assert applied(backing.write([parse_update(group, "u1", NOW - 1, second)])) == [False]
    assert backing.read(request) == expected
    assert applied(backing.write([parse_update(group, "u1", NOW, second)])) == [True]
    replaced = backing.read(request)
    assert replaced != expected
    assert applied(backing.write([parse_update(group, "u1", NOW + 1, first)])) == [True]
    assert backing.read(request) == expected
    in_one_call = [
        parse_update(group, "u2", NOW, second),
        parse_update(group, "u2", NOW - 1, first),
    ]
    assert applied(backing.write(in_one_call)) == [True, False]
    assert backing.read([ReadRequest("u2", group, group.feature_names)]) == replaced


def test_sorted_sets_merge_members_and_keep_the_newest(backing: BackingStore) -> None:
    backing.write(
        [parse_update(RECENT, "u1", NOW + i, {"recent_items": [f"n{i}"]}) for i in range(10)]
    )
    replay = [
        parse_update(RECENT, "u1", NOW - 1000, {"recent_items": ["old", "n9"]}),
        parse_update(RECENT, "u1", NOW + 20, {"recent_items": ["n0"]}),
    ]
    # The replayed members are held at higher scores or pushed out: nothing of it lands.
    assert backing.write(replay) == [WriteOutcome(), WriteOutcome(frozenset({"n0"}))]
    [values] = backing.read([ReadRequest("u1", RECENT, RECENT.feature_names)])
    assert values == {"recent_items": ("n0", *(f"n{i}" for i in range(9, 0, -1)))}
    [scanned] = list(backing.scan(RECENT))
    assert scanned.event_ms == (NOW + 20) * 1000
    assert scanned.values == {"n0": NOW + 20.0, **{f"n{i}": float(NOW + i) for i in range(1, 10)}}


def test_an_older_member_that_lands_keeps_the_newest_event_time(backing: BackingStore) -> None:
    backing.write([parse_update(RECENT, "u1", NOW, {"recent_items": ["new"]})])
    # Older, but there is room among the 10 newest: it lands, and the group stays as new.
    [outcome] = backing.write([parse_update(RECENT, "u1", NOW - 60, {"recent_items": ["old"]})])
    assert outcome == WriteOutcome(frozenset({"old"}))
    [scanned] = list(backing.scan(RECENT))
    assert scanned.event_ms == NOW * 1000
    assert scanned.values == {"new": float(NOW), "old": float(NOW - 60)}


def test_scan_yields_every_held_group_with_its_event_time(backing: BackingStore) -> None:
    ids = [f"u{i}" for i in range(30)]
    backing.write(
        [parse_update(FEATURES, e, NOW + i, {"tx_count_1h": i}) for i, e in enumerate(ids)]
    )
    backing.write([parse_update(EMBEDDING, "u0", NOW, {"embedding": [0.5] * 16})])
    scanned = {update.entity_id: update for update in backing.scan(FEATURES)}
    assert sorted(scanned) == sorted(ids)
    for i, entity_id in enumerate(ids):
        update = scanned[entity_id]
        assert (update.group, update.event_ms) == (FEATURES, (NOW + i) * 1000)
        assert update.values == {"tx_count_1h": i}
    [blob] = list(backing.scan(EMBEDDING))
    assert (blob.entity_id, blob.values) == ("u0", {"embedding": (0.5,) * 16})
    assert list(backing.scan(RECENT)) == []


def test_the_expiry_rule_is_event_time_plus_ttl_after_now() -> None:
    ttl_ms = ttl_s(FEATURES) * 1000
    now_ms = NOW * 1000
    assert is_live(FEATURES, now_ms - ttl_ms + 1, now_ms)
    assert not is_live(FEATURES, now_ms - ttl_ms, now_ms)
    assert oldest_live_ms(FEATURES, now_ms) == now_ms - ttl_ms + 1
    assert expires_at_ms(FEATURES, now_ms) == now_ms + ttl_ms
    assert not is_live(FEATURES, now_ms, expires_at_ms(FEATURES, now_ms))


SOME_VALUES: dict[FeatureGroup, dict[str, Any]] = {
    FEATURES: {"tx_count_1h": 1},
    RECENT: {"recent_items": ["a"]},
    EMBEDDING: {"embedding": [1.0] * 16},
}
"""A value of each group, as written; read back as ``READ_BACK``."""

READ_BACK: dict[FeatureGroup, dict[str, Any]] = {
    FEATURES: {"tx_count_1h": 1},
    RECENT: {"recent_items": ("a",)},
    EMBEDDING: {"embedding": (1.0,) * 16},
}


@pytest.mark.parametrize("group", [FEATURES, RECENT, EMBEDDING], ids=lambda g: g.structure)
def test_a_group_is_served_within_its_ttl_and_a_miss_from_then_on(
    backing: BackingStore, group: FeatureGroup
) -> None:
    ttl_ms = ttl_s(group) * 1000
    ages_ms = {"inside": ttl_ms - 1, "at": ttl_ms, "past": ttl_ms + 1}
    backing.write(
        [
            parse_update(group, name, (NOW * 1000 - age) / 1000, SOME_VALUES[group])
            for name, age in ages_ms.items()
        ]
    )
    inside, at, past = backing.read(
        [ReadRequest(name, group, group.feature_names) for name in ages_ms]
    )
    assert (inside, at, past) == (READ_BACK[group], None, None)
    assert len(list(backing.scan(group))) == 3  # kept, only not served


def test_each_group_expires_after_its_own_ttl(backing: BackingStore, clock: ManualClock) -> None:
    backing.write([parse_update(group, "u1", NOW, SOME_VALUES[group]) for group in SOME_VALUES])
    requests = every_group("u1")

    def served_at(now: float) -> list[bool]:
        clock.now = now
        return [values is not None for values in backing.read(requests)]

    assert served_at(NOW + ttl_s(FEATURES) - 1) == [True, True, True]
    assert served_at(NOW + ttl_s(FEATURES)) == [False, True, True]
    assert served_at(NOW + ttl_s(RECENT)) == [False, False, True]
    assert served_at(NOW + ttl_s(EMBEDDING)) == [False, False, False]


def test_writes_treat_an_expired_group_as_absent(backing: BackingStore, clock: ManualClock) -> None:
    backing.write(
        [
            parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1, "tx_sum_1h": 2.0}),
            parse_update(RECENT, "u1", NOW, {"recent_items": ["old"]}),
            parse_update(FEATURES, "u2", NOW, {"tx_count_1h": 1}),
            parse_update(EMBEDDING, "u2", NOW, {"embedding": [1.0] * 16}),
        ]
    )
    clock.now = later = NOW + ttl_s(EMBEDDING)
    # A newer update replaces an expired group whole: nothing of it is merged back to life.
    assert backing.write(
        [
            parse_update(FEATURES, "u1", later, {"tx_sum_1h": 5.0}),
            parse_update(RECENT, "u1", later, {"recent_items": ["new"]}),
        ]
    ) == [WriteOutcome(frozenset({"tx_sum_1h"})), WriteOutcome(frozenset({"new"}))]
    assert backing.read(every_group("u1")[:2]) == [
        {"tx_sum_1h": 5.0},
        {"recent_items": ("new",)},
    ]
    # An older update is not skipped as older than the expired group (Redis would not skip
    # it either); it is applied, and is expired itself.
    older = [
        parse_update(FEATURES, "u2", NOW - 1, {"tx_count_1h": 2}),
        parse_update(EMBEDDING, "u2", NOW - 1, {"embedding": [2.0] * 16}),
    ]
    assert applied(backing.write(older)) == [True, True]
    u2 = [ReadRequest("u2", group, group.feature_names) for group in (FEATURES, EMBEDDING)]
    assert backing.read(u2) == [None, None]
    clock.now = NOW
    assert backing.read(u2) == [{"tx_count_1h": 2}, {"embedding": (2.0,) * 16}]


def test_a_store_opened_from_its_spec_expires_groups_by_the_real_clock(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The service's and the command line's path; hours of slack either side of the TTL.
    if kind == "sqlite":
        spec = f"sqlite:{tmp_path / 'backing.sqlite3'}"
    else:
        spec = f"dynamodb:{request.getfixturevalue('dynamodb_table')}"
    store = open_backing_store(spec)
    now = int(time.time())
    store.write(
        [
            parse_update(FEATURES, "recent", now - 60, {"tx_count_1h": 1}),
            parse_update(FEATURES, "old", now - ttl_s(FEATURES) - 3600, {"tx_count_1h": 2}),
        ]
    )
    requests = [ReadRequest(name, FEATURES, ("tx_count_1h",)) for name in ("recent", "old")]
    assert store.read(requests) == [{"tx_count_1h": 1}, None]
    store.close()


def test_the_resolver_falls_through_an_expired_backing_group_to_defaults(
    kind: str, async_where: str, settings: Settings
) -> None:
    async def scenario() -> list[GroupResult]:
        backing = async_store(kind, async_where)
        redis_store = async_redis_store(settings)
        try:
            await backing.write(
                [
                    parse_update(FEATURES, "live", NOW - 60, {"tx_count_1h": 3}),
                    parse_update(FEATURES, "expired", NOW - ttl_s(FEATURES), {"tx_count_1h": 4}),
                ]
            )
            tiers = [redis_tier(redis_store, settings), backing_tier(backing, settings)]
            cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
            # A generous deadline: this test is about tiers, not time.
            resolver = Resolver(EXAMPLE_REGISTRY, tiers, cache, 5.0)
            resolved = await resolver.resolve(
                ["live", "expired"], resolver.selection("user", ["features"])
            )
            return [entity.groups["features"] for entity in resolved]
        finally:
            await redis_store.close()
            await backing.close()

    live, expired = asyncio.run(scenario())
    assert live.source is Source.BACKING
    assert live.values["tx_count_1h"] == 3
    assert expired.source is Source.DEFAULT
    assert dict(expired.values) == dict(FEATURES.defaults)


def test_a_read_of_many_keys_answers_every_request_in_order(backing: BackingStore) -> None:
    held = [f"u{i}" for i in range(0, 260, 2)]
    backing.write([parse_update(FEATURES, e, NOW, {"tx_count_1h": int(e[1:])}) for e in held])
    requests = [ReadRequest(f"u{i}", FEATURES, ("tx_count_1h",)) for i in range(260)]
    requests += requests[:5]
    expected = [{"tx_count_1h": i} if i % 2 == 0 else None for i in range(260)]
    assert backing.read(requests) == expected + expected[:5]


def test_writes_from_two_stores_on_one_database_never_regress(
    open_backing: Callable[[], BackingStore],
) -> None:
    first, second = open_backing(), open_backing()
    first.write([parse_update(FEATURES, "u1", NOW + 10, {"tx_count_1h": 10})])
    assert second.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 0})]) == [WriteOutcome()]
    assert first.read([ReadRequest("u1", FEATURES, ("tx_count_1h",))]) == [{"tx_count_1h": 10}]


def test_racing_sqlite_writers_lose_nothing_and_end_at_the_newest(tmp_path: Path) -> None:
    # SQLite only: moto does not serialize conditional writes to one item, as DynamoDB does.
    path = tmp_path / "backing.sqlite3"
    SqliteStore(path).close()
    start = threading.Barrier(2)

    def writer(offset: int) -> None:
        store = SqliteStore(path, clock=ManualClock(NOW))
        start.wait()
        for i in range(offset, 40, 2):
            store.write(
                [
                    parse_update(RECENT, "u1", NOW + i, {"recent_items": [f"m{i:02d}"]}),
                    parse_update(FEATURES, "u1", NOW + 39 - i, {"tx_count_1h": 39 - i}),
                ]
            )
        store.close()

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = SqliteStore(path, clock=ManualClock(NOW))
    recent, features = store.read(
        [
            ReadRequest("u1", RECENT, RECENT.feature_names),
            ReadRequest("u1", FEATURES, ("tx_count_1h",)),
        ]
    )
    store.close()
    assert recent == {"recent_items": tuple(f"m{i:02d}" for i in range(39, 29, -1))}
    assert features == {"tx_count_1h": 39}


def async_store(kind: str, where: str, max_pending: int = 64) -> AsyncBackingStore:
    return async_backing_store(f"{kind}:{where}", clock=ManualClock(NOW), max_pending=max_pending)


@pytest.fixture
def async_where(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The database file or table an async store of ``kind`` opens."""
    if kind == "sqlite":
        return str(tmp_path / "backing.sqlite3")
    return str(request.getfixturevalue("dynamodb_table"))


def test_the_async_store_reads_what_it_wrote(kind: str, async_where: str) -> None:
    updates = [
        parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 2}),
        parse_update(RECENT, "u1", NOW, {"recent_items": ["a"]}),
        parse_update(EMBEDDING, "u1", NOW, {"embedding": [0.25] * 16}),
    ]

    timer = StageTimer()

    async def run() -> tuple[list[WriteOutcome], list[StoredValues | None]]:
        store = async_store(kind, async_where)
        try:
            return await store.write(updates), await store.read(every_group("u1"), timer)
        finally:
            await store.close()

    outcomes, answers = asyncio.run(run())
    assert applied(outcomes) == [True] * 3
    assert answers == [{"tx_count_1h": 2}, {"recent_items": ("a",)}, {"embedding": (0.25,) * 16}]
    assert list(timer.milliseconds()) == ["backing"]


def test_the_async_store_refuses_rather_than_queue(kind: str, async_where: str) -> None:
    async def run() -> list[Any]:
        store = async_store(kind, async_where, max_pending=1)
        try:
            return list(
                await asyncio.gather(
                    store.read(every_group("u1")),
                    store.read(every_group("u1")),
                    return_exceptions=True,
                )
            )
        finally:
            await store.close()

    first, second = asyncio.run(run())
    assert first == [None, None, None]
    assert isinstance(second, StoreUnavailable)


def test_the_async_store_takes_calls_again_once_its_queue_drains(
    kind: str, async_where: str
) -> None:
    async def run() -> list[list[Any]]:
        store = async_store(kind, async_where, max_pending=2)
        try:
            rounds = []
            for _ in range(2):
                reads = (store.read(every_group("u1")) for _ in range(3))
                rounds.append(list(await asyncio.gather(*reads, return_exceptions=True)))
            return rounds
        finally:
            await store.close()

    # Two at once are taken (on SQLite, one after the other on its connection's own thread),
    # the third refused; once they are done, the same again.
    for answers in asyncio.run(run()):
        assert answers[:2] == [[None, None, None]] * 2
        assert isinstance(answers[2], StoreUnavailable)


def test_a_stored_value_the_registry_no_longer_declares_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    SqliteStore(path).close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO feature_groups (key, grp, event_ms, vals) VALUES (?, ?, ?, ?)",
            ("user:{u1}:features", "user:features", NOW * 1000,
             '{"retired_feature": 1, "tx_count_1h": 3, "is_premium": 1}'),
        )  # fmt: skip
    with closing(SqliteStore(path, clock=ManualClock(NOW))) as store:
        [values] = store.read([ReadRequest("u1", FEATURES, FEATURES.feature_names)])
    assert values == {"tx_count_1h": 3, "is_premium": 1}


def test_a_locked_sqlite_write_waits_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    SqliteStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def release() -> None:
        holder.execute("COMMIT")

    async def run() -> list[WriteOutcome]:
        store = async_backing_store(f"sqlite:{path}")
        try:
            write = store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
            outcomes, _ = await asyncio.gather(write, release())
            return outcomes
        finally:
            await store.close()

    try:
        outcomes = asyncio.run(run())
    finally:
        holder.close()
    assert applied(outcomes) == [True]


def test_a_sqlite_write_that_stays_locked_is_a_store_timeout(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    store = SqliteStore(path, busy_timeout_s=0.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreTimeout):
            store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
    finally:
        holder.close()
        store.close()


def test_a_closed_sqlite_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "backing.sqlite3")
    store.close()
    with pytest.raises(StoreUnavailable):
        store.read(every_group("u1"))
    with pytest.raises(StoreUnavailable):
        store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])


def test_an_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path / "no-such-dir" / "backing.sqlite3")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    path.write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(StoreError):
        SqliteStore(path)


def test_an_unreachable_dynamodb_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env(monkeypatch, f"http://127.0.0.1:{free_port()}")
    store = DynamoDbStore("features", dynamodb_client())
    with pytest.raises(StoreUnavailable):
        store.read(every_group("u1"))
    with pytest.raises(StoreUnavailable):
        store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
    store.close()


def test_a_missing_dynamodb_table_is_a_store_error(dynamodb_table: str) -> None:
    store = DynamoDbStore(f"{dynamodb_table}-missing", dynamodb_client())
    with pytest.raises(StoreError):
        store.read(every_group("u1"))
    store.close()


def _leave_unprocessed(times: int) -> Callable[..., None]:
    """A botocore hook that moves every found item to UnprocessedKeys, ``times`` times."""
    left = [times]

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        if left[0] == 0:
            return
        left[0] -= 1
        for table, items in parsed.get("Responses", {}).items():
            keys = [{"_pk": item["_pk"]} for item in items]
            parsed.setdefault("UnprocessedKeys", {})[table] = {"Keys": keys}
            parsed["Responses"][table] = []

    return hook


def _throttled_store(table: str, times: int, read_budget_s: float) -> DynamoDbStore:
    client = dynamodb_client()
    client.meta.events.register("after-call.dynamodb.BatchGetItem", _leave_unprocessed(times))
    return DynamoDbStore(table, client, read_budget_s=read_budget_s, clock=ManualClock(NOW))


def _held_in(table: str, *updates: FeatureUpdate) -> None:
    store = DynamoDbStore(table, dynamodb_client(), clock=ManualClock(NOW))
    store.write(updates)
    store.close()


def test_unprocessed_keys_are_asked_again(dynamodb_table: str) -> None:
    _held_in(dynamodb_table, parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1}))
    store = _throttled_store(dynamodb_table, times=2, read_budget_s=30.0)
    assert store.read(every_group("u1")) == [{"tx_count_1h": 1}, None, None]
    # A write reads what it merges into the same way.
    store = _throttled_store(dynamodb_table, times=2, read_budget_s=30.0)
    store.write([parse_update(FEATURES, "u1", NOW + 1, {"tx_sum_1h": 2.0})])
    assert store.read(every_group("u1"))[0] == {"tx_count_1h": 1, "tx_sum_1h": 2.0}
    store.close()


def test_keys_still_unprocessed_when_the_budget_ends_are_a_store_timeout(
    dynamodb_table: str,
) -> None:
    _held_in(dynamodb_table, parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1}))
    store = _throttled_store(dynamodb_table, times=sys.maxsize, read_budget_s=0.05)
    with pytest.raises(StoreTimeout):
        store.read(every_group("u1"))
    store.close()


def test_items_dynamodb_ttl_has_not_deleted_yet_are_misses(
    dynamodb_table: str, clock: ManualClock
) -> None:
    client = dynamodb_client()
    client.update_time_to_live(
        TableName=dynamodb_table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "_expires_at"},
    )
    described = client.describe_time_to_live(TableName=dynamodb_table)["TimeToLiveDescription"]
    assert (described["TimeToLiveStatus"], described["AttributeName"]) == ("ENABLED", "_expires_at")
    store = DynamoDbStore(dynamodb_table, client, clock=clock)
    store.write([parse_update(FEATURES, "u1", NOW + 0.001, {"tx_count_1h": 1})])
    key = {"_pk": {"S": "user:{u1}:features"}}
    expires_at = int(client.get_item(TableName=dynamodb_table, Key=key)["Item"]["_expires_at"]["N"])
    assert expires_at == NOW + ttl_s(FEATURES) + 1  # rounded up: never deleted while live
    clock.now = expires_at
    # DynamoDB deletes expired items lazily, up to about two days later: until then they are
    # still there, and the store answers them as misses.
    assert store.read([ReadRequest("u1", FEATURES, ("tx_count_1h",))]) == [None]
    assert "Item" in client.get_item(TableName=dynamodb_table, Key=key)
    store.close()


def test_dynamodb_items_have_the_documented_layout(dynamodb_table: str) -> None:
    store = DynamoDbStore(dynamodb_table, dynamodb_client(), clock=ManualClock(NOW))
    store.write(
        [
            parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 3, "tx_sum_1h": 2.5}),
            parse_update(RECENT, "u1", NOW, {"recent_items": ["a"]}),
            parse_update(EMBEDDING, "u1", NOW, {"embedding": [1.0] * 16}),
        ]
    )
    client = dynamodb_client()
    items = {
        key: client.get_item(TableName=dynamodb_table, Key={"_pk": {"S": key}})["Item"]
        for key in ("user:{u1}:features", "user:{u1}:recent_items", "user:{u1}:embedding")
    }
    client.close()
    store.close()
    ms = {"N": str(NOW * 1000)}
    assert items["user:{u1}:features"] == {
        "_pk": {"S": "user:{u1}:features"},
        "_event_ms": ms,
        "_grp": {"S": "user:features"},
        "_expires_at": {"N": str(NOW + 2 * 3600)},
        "_rev": {"N": "1"},
        "tx_count_1h": {"N": "3"},
        "tx_sum_1h": {"N": "2.5"},
    }
    for key, group in (("user:{u1}:recent_items", RECENT), ("user:{u1}:embedding", EMBEDDING)):
        expires_at = NOW + int(group.ttl.total_seconds())
        assert items[key]["_expires_at"] == {"N": str(expires_at)}
    members = items["user:{u1}:recent_items"]["recent_items"]["M"]
    assert {member: Decimal(score["N"]) for member, score in members.items()} == {"a": NOW}
    assert items["user:{u1}:embedding"]["embedding"] == {
        "B": EMBEDDING.features[0].dtype.encode((1.0,) * 16)
    }


def test_a_record_sqlite_cannot_decode_refuses_writes_to_its_key_only(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    store = SqliteStore(path, clock=ManualClock(NOW))
    store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE feature_groups SET event_ms = 'soon' WHERE key = 'user:{u1}:features'")
    first, second = store.write(
        [
            parse_update(FEATURES, "u1", NOW + 1, {"tx_count_1h": 2}),
            parse_update(FEATURES, "u2", NOW + 1, {"tx_count_1h": 3}),
        ]
    )
    assert first.refused is not None and "unreadable record at user:{u1}:features" in first.refused
    assert second == WriteOutcome(frozenset({"tx_count_1h"}))
    # Read as absent (and logged), as Redis' undecodable values are.
    assert store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in ("u1", "u2")]) == [
        None,
        {"tx_count_1h": 3},
    ]
    assert [update.entity_id for update in store.scan(FEATURES)] == ["u2"]
    store.close()


def test_sqlite_commits_every_write_to_disk() -> None:
    store = SqliteStore(":memory:")
    # 2 is FULL: a write that returned survives a power loss, not only a crash.
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)
    store.close()


def test_a_database_made_before_per_value_times_gets_its_column(tmp_path: Path) -> None:
    path = tmp_path / "backing.sqlite3"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE feature_groups (key TEXT PRIMARY KEY, grp TEXT NOT NULL, "
            "event_ms INTEGER NOT NULL, vals TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO feature_groups VALUES "
            f"('user:{{u1}}:features', 'user:features', {NOW * 1000}, '{{\"tx_count_1h\": 4}}');"
        )
    store = SqliteStore(path, clock=ManualClock(NOW))
    store.write([parse_update(FEATURES, "u1", NOW + 1, {"tx_sum_1h": 2.0})])
    [update] = list(store.scan(FEATURES))
    assert update.values == {"tx_count_1h": 4, "tx_sum_1h": 2.0}
    assert (update.ms_of("tx_count_1h"), update.event_ms) == (NOW * 1000, (NOW + 1) * 1000)
    store.close()


@pytest.mark.parametrize(
    ("value", "problem"), [(1e200, "outside DynamoDB's numbers"), (1e-140, "outside DynamoDB's")]
)
def test_numbers_dynamodb_cannot_hold_refuse_their_update_only(
    dynamodb_table: str, value: float, problem: str
) -> None:
    store = DynamoDbStore(dynamodb_table, dynamodb_client(), clock=ManualClock(NOW))
    refused, written = store.write(
        [
            parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1, "tx_sum_1h": value}),
            parse_update(FEATURES, "u2", NOW, {"tx_sum_1h": 2.5}),
        ]
    )
    assert refused.refused is not None and problem in refused.refused
    assert "tx_sum_1h" in refused.refused
    assert written == WriteOutcome(frozenset({"tx_sum_1h"}))
    assert store.read([ReadRequest(u, FEATURES, ("tx_sum_1h",)) for u in ("u1", "u2")]) == [
        None,
        {"tx_sum_1h": 2.5},
    ]
    store.close()


def test_an_item_dynamodb_refuses_as_too_large_refuses_its_update_only(
    dynamodb_table: str,
) -> None:
    # A group whose items can outgrow DynamoDB's 400 KB: 4,000 members of 128 characters
    # (the longest id features.keys allows).
    wide = FeatureGroup(
        "wide",
        FEATURES.entity,
        Structure.SORTED_SET,
        timedelta(hours=1),
        (Feature("wide", "str_list", (), dim=4000),),
        top_n=4000,
    )
    store = DynamoDbStore(dynamodb_table, dynamodb_client(), clock=ManualClock(NOW))
    members = [f"{i:04d}" + "m" * 124 for i in range(4000)]
    refused, written = store.write(
        [
            parse_update(wide, "u1", NOW, {"wide": members}),
            parse_update(wide, "u2", NOW, {"wide": members[:10]}),
        ]
    )
    assert refused.refused is not None and "DynamoDB refused the item" in refused.refused
    assert written.landed == frozenset(members[:10])
    store.close()


def test_an_item_dynamodb_cannot_decode_refuses_writes_to_its_key(dynamodb_table: str) -> None:
    client = dynamodb_client()
    client.put_item(
        TableName=dynamodb_table,
        Item={
            "_pk": {"S": "user:{u1}:features"},
            "_event_ms": {"S": "soon"},
            "tx_count_1h": {"N": "1"},
        },
    )
    store = DynamoDbStore(dynamodb_table, client, clock=ManualClock(NOW))
    [outcome] = store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 2})])
    assert (
        outcome.refused is not None and "unreadable item at user:{u1}:features" in outcome.refused
    )
    assert store.read([ReadRequest("u1", FEATURES, ("tx_count_1h",))]) == [None]
    store.close()


def test_an_update_the_backing_store_refuses_never_reaches_redis(
    dynamodb_table: str, redis_store: RedisStore, redis_client: redis.Redis
) -> None:
    backing = DynamoDbStore(dynamodb_table, dynamodb_client(), clock=ManualClock(NOW))
    through = WriteThrough(redis_store, backing)
    refused, written = through.write(
        [
            parse_update(FEATURES, "u1", NOW, {"tx_sum_1h": 1e200}),
            parse_update(FEATURES, "u2", NOW, {"tx_sum_1h": 2.5}),
        ]
    )
    assert refused.refused is not None and "DynamoDB cannot hold" in refused.refused
    assert written == WriteOutcome(frozenset({"tx_sum_1h"}))
    assert redis_client.keys() == [b"user:{u2}:features"]
    backing.close()


def test_a_dynamodb_write_that_lost_a_race_merges_again(dynamodb_table: str) -> None:
    # Another writer changes the item between this store's read and its put, once.
    client = dynamodb_client()
    rival = DynamoDbStore(dynamodb_table, dynamodb_client(), clock=ManualClock(NOW))
    raced: list[bool] = []

    def write_first(**_: Any) -> None:
        if not raced:
            raced.append(True)
            rival.write([parse_update(FEATURES, "u1", NOW + 5, {"tx_sum_1h": 7.5})])

    client.meta.events.register("before-call.dynamodb.PutItem", write_first)
    store = DynamoDbStore(dynamodb_table, client, clock=ManualClock(NOW))
    [outcome] = store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 2})])
    assert raced and outcome == WriteOutcome(frozenset({"tx_count_1h"}))
    [values] = store.read([ReadRequest("u1", FEATURES, ("tx_count_1h", "tx_sum_1h"))])
    assert values == {"tx_count_1h": 2, "tx_sum_1h": 7.5}
    [held] = list(store.scan(FEATURES))
    assert (held.event_ms, held.ms_of("tx_count_1h")) == ((NOW + 5) * 1000, NOW * 1000)
    store.close()
    rival.close()


def test_a_dynamodb_item_written_before_revisions_is_merged_into(dynamodb_table: str) -> None:
    client = dynamodb_client()
    client.put_item(
        TableName=dynamodb_table,
        Item={
            "_pk": {"S": "user:{u1}:features"},
            "_event_ms": {"N": str(NOW * 1000)},
            "_grp": {"S": "user:features"},
            "tx_count_1h": {"N": "4"},
        },
    )
    store = DynamoDbStore(dynamodb_table, client, clock=ManualClock(NOW))
    store.write([parse_update(FEATURES, "u1", NOW + 1, {"tx_sum_1h": 1.5})])
    [values] = store.read([ReadRequest("u1", FEATURES, ("tx_count_1h", "tx_sum_1h"))])
    assert values == {"tx_count_1h": 4, "tx_sum_1h": 1.5}
    store.close()
