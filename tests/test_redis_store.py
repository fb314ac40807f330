"""The Redis store against a real server: layout, TTLs, decoding, errors.

The read behaviours run against both the blocking and the asyncio store.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pytest
import redis
from redis.typing import EncodableT, FieldT

from features.errors import StoreTimeout, StoreUnavailable
from features.ingest.updates import parse_update
from features.settings import Settings
from features.sources import Degraded
from features.stores.base import (
    FailedRead,
    ReadAnswer,
    ReadRequest,
    StoredValues,
    WriteOutcome,
    event_ms_of,
)
from features.stores.redis import (
    WRITE_CHUNK_BYTES,
    RedisStore,
    _chunks,
    _script_call,
    async_redis_store,
    sync_client,
)
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis

USER_FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT_ITEMS = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")

NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""

Reader = Callable[[Sequence[ReadRequest]], list[ReadAnswer]]


def values_of(answer: ReadAnswer) -> StoredValues:
    """An answer that must hold values (or nothing), as a mapping."""
    assert not isinstance(answer, FailedRead), answer
    return answer or {}


def read_all(entity_id: str) -> list[ReadRequest]:
    return [
        ReadRequest(entity_id, group, group.feature_names)
        for group in (USER_FEATURES, RECENT_ITEMS, EMBEDDING)
    ]


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings))
    yield store
    store.close()


def make_reader(kind: str, settings: Settings) -> tuple[Reader, Callable[[], None]]:
    if kind == "sync":
        sync_store = RedisStore(sync_client(settings))
        return sync_store.read, sync_store.close
    loop = asyncio.new_event_loop()
    async_store = async_redis_store(settings)

    def read(requests: Sequence[ReadRequest]) -> list[ReadAnswer]:
        return loop.run_until_complete(async_store.read(requests))

    def close() -> None:
        loop.run_until_complete(async_store.close())
        loop.close()

    return read, close


@pytest.fixture(params=["sync", "async"])
def reader(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Reader]:
    """The read path of each store implementation, driven synchronously."""
    read, close = make_reader(request.param, settings)
    yield read
    close()


def test_hash_values_are_plain_decimal_strings(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    store.write([parse_update(USER_FEATURES, "u1", NOW, {"tx_count_1h": 3, "avg_tx_90d": 12.5})])
    assert redis_client.hgetall("user:{u1}:features") == {
        b"tx_count_1h": b"3",
        b"avg_tx_90d": b"12.5",
        b"_event_ms": b"%d" % (NOW * 1000),
    }


@pytest.mark.parametrize(
    ("group_name", "values"),
    [
        ("features", {"tx_count_1h": 1}),
        ("recent_items", {"recent_items": ["i1"]}),
        ("embedding", {"embedding": [1.0] * 16}),
    ],
)
def test_a_key_lives_its_ttl_counted_from_the_event_time(
    store: RedisStore, redis_client: redis.Redis, group_name: str, values: dict[str, object]
) -> None:
    # A value 1.5 h old: a 2 h group keeps it 0.5 h more, an 8 h group 6.5 h, and so on.
    group = EXAMPLE_REGISTRY.group("user", group_name)
    event_s = time.time() - 5400
    store.write([parse_update(group, "u1", event_s, values)])
    left_ms = (event_s + group.ttl.total_seconds() - time.time()) * 1000
    keys = [f"user:{{u1}}:{group_name}"]
    if group_name == "embedding":
        keys.append("user:{u1}:embedding:_event_ms")
    for key in keys:
        # A few ms of slack above: the event time is rounded to whole milliseconds, and
        # Redis' clock and this process's are read at different moments.
        assert left_ms - 5_000 < redis_client.pttl(key) <= left_ms + 5


def test_a_hash_lives_until_its_newest_field_expires(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    now = time.time()
    store.write([parse_update(USER_FEATURES, "u1", now - 600, {"tx_count_1h": 1})])
    store.write([parse_update(USER_FEATURES, "u1", now - 7000, {"tx_sum_1h": 2.0})])
    left_ms = (now - 600 + USER_FEATURES.ttl.total_seconds() - time.time()) * 1000
    assert left_ms - 5_000 < redis_client.pttl("user:{u1}:features") <= left_ms + 1


def test_a_sorted_set_lives_until_its_newest_member_expires(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    now = time.time()
    store.write(
        [
            parse_update(RECENT_ITEMS, "u1", now - 60, {"recent_items": ["new"]}),
            parse_update(RECENT_ITEMS, "u1", now - 3600, {"recent_items": ["old"]}),
        ]
    )
    left_ms = (now - 60 + RECENT_ITEMS.ttl.total_seconds() - time.time()) * 1000
    assert left_ms - 5_000 < redis_client.pttl("user:{u1}:recent_items") <= left_ms + 1


def test_sorted_set_is_trimmed_to_top_n_and_read_newest_first(
    store: RedisStore, redis_client: redis.Redis, reader: Reader
) -> None:
    store.write(
        [
            parse_update(RECENT_ITEMS, "u1", NOW + i, {"recent_items": [f"item{i:02d}"]})
            for i in range(25)
        ]
    )
    assert redis_client.zcard("user:{u1}:recent_items") == 10
    [values] = reader([ReadRequest("u1", RECENT_ITEMS, RECENT_ITEMS.feature_names)])
    assert values == {"recent_items": tuple(f"item{i:02d}" for i in range(24, 14, -1))}


def test_embedding_is_packed_little_endian_float32(
    store: RedisStore, redis_client: redis.Redis, reader: Reader
) -> None:
    vector = [i / 4 for i in range(16)]
    store.write([parse_update(EMBEDDING, "u1", NOW, {"embedding": vector})])
    assert redis_client.get("user:{u1}:embedding") == struct.pack("<16f", *vector)
    [values] = reader([ReadRequest("u1", EMBEDDING, EMBEDDING.feature_names)])
    assert values == {"embedding": tuple(vector)}


def test_read_returns_one_answer_per_request_in_order(store: RedisStore, reader: Reader) -> None:
    store.write([parse_update(USER_FEATURES, "u2", NOW, {"is_premium": 1})])
    answers = reader(read_all("u1") + read_all("u2"))
    assert answers == [None, None, None, {"is_premium": 1}, None, None]


def test_values_written_by_any_client_are_cast_to_declared_types(
    redis_client: redis.Redis, reader: Reader
) -> None:
    redis_client.hset(
        "user:{u1}:features",
        mapping={"tx_count_1h": "7", "tx_sum_1h": "99", "account_age_days": "30.0"},
    )
    [values] = reader([ReadRequest("u1", USER_FEATURES, USER_FEATURES.feature_names)])
    assert values == {"tx_count_1h": 7, "tx_sum_1h": 99.0, "account_age_days": 30}
    assert isinstance(values["tx_sum_1h"], float)
    assert isinstance(values["account_age_days"], int)


def test_a_value_that_does_not_decode_fails_its_group_as_a_bad_value(
    redis_client: redis.Redis, reader: Reader
) -> None:
    redis_client.hset("user:{u1}:features", mapping={"tx_count_1h": "lots", "is_premium": "1"})
    redis_client.set("user:{u1}:embedding", b"short")
    redis_client.hset("user:{u2}:features", "is_premium", "1")
    features, recent, embedding, healthy = reader([*read_all("u1"), read_all("u2")[0]])
    assert (recent, healthy) == (None, {"is_premium": 1})
    for answer, key, field in (
        (features, "user:{u1}:features", "tx_count_1h"),
        (embedding, "user:{u1}:embedding", "embedding"),
    ):
        assert isinstance(answer, FailedRead)
        assert answer.reason is Degraded.BAD_VALUE
        assert answer.error.startswith(f"{key}: {field}: ")


@pytest.mark.parametrize(
    ("field", "stored", "problem"),
    [
        ("credit_score_bucket", "99", "above the maximum 4"),
        ("tx_count_1h", "-1", "below the minimum 0"),
    ],
)
def test_a_value_outside_its_declaration_fails_its_group_as_a_bad_value(
    redis_client: redis.Redis, reader: Reader, field: str, stored: str, problem: str
) -> None:
    redis_client.hset("user:{u1}:features", mapping={"is_premium": "1", field: stored})
    [answer] = reader([read_all("u1")[0]])
    assert isinstance(answer, FailedRead)
    assert answer.reason is Degraded.BAD_VALUE
    assert problem in answer.error


def test_a_key_of_the_wrong_type_is_a_bad_value_not_nothing(
    redis_client: redis.Redis, reader: Reader
) -> None:
    redis_client.set("user:{u1}:recent_items", b"a string where a sorted set belongs")
    redis_client.hset("user:{u1}:features", "tx_count_1h", "3")
    features, recent, embedding = reader(read_all("u1"))
    assert (features, embedding) == ({"tx_count_1h": 3}, None)
    assert isinstance(recent, FailedRead)
    assert recent.reason is Degraded.BAD_VALUE
    assert recent.error.startswith("user:{u1}:recent_items: WRONGTYPE ")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_keys_an_acl_refuses_are_failed_reads_naming_noperm(
    own_redis: LocalRedis, kind: str
) -> None:
    read, close = make_reader(kind, Settings(redis_url=own_redis.url, redis_socket_timeout_ms=5000))
    with redis.Redis(port=own_redis.port) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~other:*")
        try:
            answers = read(read_all("u1"))
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "allkeys")
    close()
    assert [type(answer) for answer in answers] == [FailedRead] * 3
    assert all(cast(FailedRead, answer).error.startswith("NOPERM ") for answer in answers)


FULL_HASH = {
    "tx_count_1h": ("3", 3),
    "tx_sum_1h": ("120.5", 120.5),
    "tx_count_24h": ("9", 9),
    "tx_sum_24h": ("400.25", 400.25),
    "account_age_days": ("30", 30),
    "avg_tx_90d": ("44.0", 44.0),
    "distinct_merchants_7d": ("4", 4),
    "credit_score_bucket": ("2", 2),
    "is_premium": ("1", 1),
    "last_login_ts": ("1764230000", 1764230000),
}


BAD = object()
"""The expected answer to a value its declaration cannot hold: a ``bad_value`` failed read."""
NO_EVENT_TIME = object()
"""The expected answer to an event time that is not one: the values, with no event time."""


@pytest.mark.parametrize(
    ("field", "stored", "expected"),
    [
        (None, None, None),
        ("tx_count_1h", "3.0", 3),
        ("tx_sum_1h", "nan", BAD),
        ("tx_sum_24h", "inf", BAD),
        ("account_age_days", "9" * 400, BAD),
        ("is_premium", "yes", BAD),
        ("is_premium", "2", BAD),
    ],
    ids=["all well formed", "int written as float", "nan", "inf", "beyond int64", "not a number",
         "out of range"],
)  # fmt: skip
def test_a_full_hash_decodes_every_field_or_fails_as_a_bad_value(
    redis_client: redis.Redis, reader: Reader, field: str | None, stored: str, expected: object
) -> None:
    assert set(FULL_HASH) == set(USER_FEATURES.feature_names)
    raw: dict[FieldT, EncodableT] = {name: text for name, (text, _) in FULL_HASH.items()}
    wanted: dict[str, object] = {name: value for name, (_, value) in FULL_HASH.items()}
    if field is not None:
        raw[field] = stored
        wanted[field] = expected
    redis_client.hset("user:{u1}:features", mapping=raw)
    [values] = reader([ReadRequest("u1", USER_FEATURES, USER_FEATURES.feature_names)])
    if expected is BAD:
        assert isinstance(values, FailedRead)
        assert (values.reason, values.error.split(": ")[1]) == (Degraded.BAD_VALUE, field)
        return
    assert values == wanted
    assert values is not None
    assert [type(value) for value in values.values()] == [type(wanted[name]) for name in values]


@pytest.mark.parametrize(
    ("field", "stored", "expected"),
    [
        (None, None, None),
        ("tx_sum_1h", "0.1", 0.1),
        ("tx_count_1h", "3.0", 3),
        ("last_login_ts", str(2**53 + 1), 2**53 + 1),
        ("is_premium", "1.5", BAD),
        ("tx_sum_24h", "-inf", BAD),
        ("avg_tx_90d", " 7.5", 7.5),
        ("tx_count_24h", "0x10", BAD),
        ("credit_score_bucket", "99", BAD),
        ("tx_sum_1h", "-0.5", BAD),
        ("_event_ms", "soon", NO_EVENT_TIME),
        ("_event_ms", "1764230400000.5", NO_EVENT_TIME),
    ],
    ids=["all well formed", "float", "int as float", "int beyond 2**53", "fraction", "inf",
         "padded", "hex", "above the maximum", "below the minimum", "event time not a number",
         "event time with a fraction"],
)  # fmt: skip
def test_a_large_batch_decodes_like_one_entity_at_a_time(
    redis_client: redis.Redis, reader: Reader, field: str | None, stored: str, expected: object
) -> None:
    """Batches of many hashes are decoded in bulk; one odd value must not change any answer."""
    entities = [f"u{i}" for i in range(40)]
    odd_one, missing = entities[17], entities[23]
    wanted: dict[str, dict[str, object] | None] = {}
    wanted_event_ms: list[int | None] = []
    for number, entity in enumerate(entities):
        if entity == missing:
            wanted[entity] = None
            wanted_event_ms.append(None)
            continue
        texts = {
            "tx_count_1h": str(number),
            "tx_sum_1h": repr(number / 7),
            "tx_count_24h": str(number * 3),
            "tx_sum_24h": repr(number * 1.25),
            "account_age_days": str(number + 100),
            "avg_tx_90d": repr(number / 3),
            "distinct_merchants_7d": "2",
            "credit_score_bucket": "1",
            "is_premium": str(number % 2),
            "last_login_ts": str(1764230000 + number),
        }
        values: dict[str, object] = {
            f.name: int(texts[f.name]) if f.type_name == "int" else float(texts[f.name])
            for f in USER_FEATURES.features
        }
        texts["_event_ms"] = str(NOW * 1000 + number)
        wanted_event_ms.append(NOW * 1000 + number)
        redis_client.hset(f"user:{{{entity}}}:features", mapping=dict(texts.items()))
        wanted[entity] = values
        if entity == odd_one and field is not None:
            texts[field] = stored
            redis_client.hset(f"user:{{{entity}}}:features", field, stored)
            if expected in (BAD, NO_EVENT_TIME):
                wanted_event_ms[-1] = None
            elif field in values:
                values[field] = expected
    fields = USER_FEATURES.feature_names
    answers = reader([ReadRequest(entity, USER_FEATURES, fields) for entity in entities])
    if expected is BAD:
        odd = answers[17]
        assert isinstance(odd, FailedRead)
        assert odd.reason is Degraded.BAD_VALUE
        answers[17] = wanted[odd_one] = None
    assert dict(zip(entities, answers, strict=True)) == wanted
    assert [event_ms_of(answer) for answer in answers] == wanted_event_ms
    types = {name: type(value) for name, value in values_of(answers[0]).items()}
    assert types == {f.name: int if f.type_name == "int" else float for f in USER_FEATURES.features}
    if field is not None and field in USER_FEATURES.by_name and expected is not BAD:
        assert type(values_of(answers[17])[field]) is type(expected)


def test_each_answer_carries_its_event_time_from_the_same_commands(
    store: RedisStore, redis_client: redis.Redis, reader: Reader
) -> None:
    store.write(
        [
            parse_update(USER_FEATURES, "u1", NOW - 300, {"tx_count_1h": 1, "tx_sum_1h": 2.5}),
            parse_update(USER_FEATURES, "u1", NOW - 60, {"tx_count_1h": 2}),
            parse_update(RECENT_ITEMS, "u1", NOW - 90, {"recent_items": ["i1"]}),
            parse_update(RECENT_ITEMS, "u1", NOW - 30, {"recent_items": ["i2"]}),
            parse_update(EMBEDDING, "u1", NOW - 45, {"embedding": [0.5] * 16}),
        ]
    )
    redis_client.config_resetstat()
    features, recent, embedding = reader(read_all("u1"))
    # The hash answers its newest event time (tx_sum_1h is older: _event_ms:tx_sum_1h), the
    # sorted set its newest member's score, the embedding its sibling key.
    assert [event_ms_of(answer) for answer in (features, recent, embedding)] == [
        (NOW - 60) * 1000,
        (NOW - 30) * 1000,
        (NOW - 45) * 1000,
    ]
    assert (features, recent) == (
        {"tx_count_1h": 2, "tx_sum_1h": 2.5},
        {"recent_items": ("i2", "i1")},
    )
    stats = redis_client.info("commandstats")
    calls = {
        name: stats.get(f"cmdstat_{name}", {}).get("calls")
        for name in ("hmget", "zrevrange", "get")
    }
    assert calls == {"hmget": 1, "zrevrange": 1, "get": 2}


def test_keys_written_by_hand_without_event_times_read_with_none(
    redis_client: redis.Redis, reader: Reader
) -> None:
    redis_client.hset("user:{u1}:features", mapping={"tx_count_1h": "4"})
    redis_client.zadd("user:{u1}:recent_items", {"i1": NOW - 10})
    redis_client.set("user:{u1}:embedding", struct.pack("<16f", *[1.0] * 16))
    redis_client.hset("user:{u2}:features", mapping={"tx_count_1h": "5", "_event_ms": "later"})
    features, recent, embedding, other = reader([*read_all("u1"), read_all("u2")[0]])
    assert (features, other) == ({"tx_count_1h": 4}, {"tx_count_1h": 5})
    assert [event_ms_of(answer) for answer in (features, embedding, other)] == [None] * 3
    # A sorted set's scores are its event times, whoever wrote it.
    assert event_ms_of(recent) == (NOW - 10) * 1000


def test_reads_ask_only_for_the_requested_fields(redis_client: redis.Redis, reader: Reader) -> None:
    redis_client.hset("user:{u1}:features", mapping={"tx_count_1h": "1", "is_premium": "1"})
    redis_client.config_resetstat()
    [values] = reader([ReadRequest("u1", USER_FEATURES, ("is_premium",))])
    assert values == {"is_premium": 1}
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_hmget"]["calls"] == 1
    assert "cmdstat_hgetall" not in stats


def test_a_write_larger_than_one_chunk_lands_whole(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    updates = [parse_update(USER_FEATURES, f"u{i}", NOW, {"tx_count_1h": i}) for i in range(2345)]
    assert store.write(updates) == [WriteOutcome(frozenset({"tx_count_1h"}))] * 2345
    assert redis_client.dbsize() == 2345
    assert redis_client.hget("user:{u2344}:features", "tx_count_1h") == b"2344"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stopped_server_is_store_unavailable(own_redis: LocalRedis, kind: str) -> None:
    read, close = make_reader(kind, Settings(redis_url=own_redis.url))
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        read(read_all("u1"))
    close()


FREEZE_TIMEOUT_MS = 1000.0
"""The socket timeout of the tests about a frozen server: a read of the paused server times out
after it, and one of the running server must succeed within it, on a loaded machine too."""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_frozen_server_is_a_store_timeout(own_redis: LocalRedis, kind: str) -> None:
    settings = Settings(redis_url=own_redis.url, redis_socket_timeout_ms=FREEZE_TIMEOUT_MS)
    read, close = make_reader(kind, settings)
    assert read(read_all("u1")) == [None, None, None]
    own_redis.pause()
    try:
        with pytest.raises(StoreTimeout):
            read(read_all("u1"))
    finally:
        own_redis.resume()
    close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_reply_that_comes_after_a_timeout_is_never_read_as_the_next_answer(
    own_redis: LocalRedis, kind: str
) -> None:
    settings = Settings(redis_url=own_redis.url, redis_socket_timeout_ms=FREEZE_TIMEOUT_MS)
    writer = RedisStore(sync_client(settings))
    writer.write([parse_update(USER_FEATURES, "u2", NOW, {"tx_count_1h": 2})])
    writer.close()
    read, close = make_reader(kind, settings)
    own_redis.pause()
    try:
        with pytest.raises(StoreTimeout):
            read(read_all("u1"))
    finally:
        own_redis.resume()
    # The paused server answers the abandoned read when it resumes; a connection
    # kept after the timeout would hand those replies (u1's: all None) to this read.
    assert read(read_all("u2")) == [{"tx_count_1h": 2}, None, None]
    close()


def test_replies_are_parsed_by_hiredis(settings: Settings) -> None:
    client = sync_client(settings)
    connection = client.connection_pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_HiredisParser"
    finally:
        client.connection_pool.release(connection)
        client.close()


def test_a_write_is_cut_into_round_trips_by_bytes_as_well_as_by_updates(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    # 2,000 sorted-set updates of 10 members of 128 characters (the longest id allowed):
    # about 2.9 MB, more than two round trips hold.
    updates = [
        parse_update(
            RECENT_ITEMS, f"u{i}", NOW, {"recent_items": [f"{j}" * 128 for j in range(10)]}
        )
        for i in range(2000)
    ]
    chunks = list(_chunks([_script_call(update) for update in updates]))
    assert len(chunks) > 2
    assert all(sum(c.size_bytes for c in chunk) <= WRITE_CHUNK_BYTES for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 2000
    assert all(outcome.applied for outcome in store.write(updates))
    assert redis_client.zcard("user:{u1999}:recent_items") == 10
