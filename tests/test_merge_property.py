"""Any rows, in any order, in any chunks, from any number of producers: one final state.

Hypothesis draws rows of two entities (each row some features of the hash
group, or an item of the sorted-set group, at an event time of its own), an
order, a chunk size and a point where a second producer takes over, and
materializes them into a real Redis and a backing store behind it (SQLite,
or DynamoDB on the moto server).  The state each store ends in must be the
reference model's: per field the newest non-null value, per sorted set the
newest ``top_n`` members at their newest times, the group's event time the
newest of all.  Each example writes entities of its own, so examples need no
cleanup between them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.ingest.materialize import materialize
from features.ingest.tables import open_table
from features.settings import Settings
from features.stores.backing import BackingStore
from features.stores.base import ReadRequest
from features.stores.dynamodb import DynamoDbStore, dynamodb_client
from features.stores.redis import RedisStore, sync_client
from features.stores.redis_scripts import EVENT_MS_FIELD
from features.stores.sqlite import SqliteStore
from features.stores.write_through import WriteThrough
from service.harness.example import EXAMPLE_REGISTRY

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
FIELDS = ("tx_count_1h", "tx_sum_1h", "is_premium")
ENTITIES = ("a", "b")

BOUNDED = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""A few dozen examples per store: well under a minute in all."""

field_values = st.fixed_dictionaries(
    {},
    optional={
        "tx_count_1h": st.integers(0, 1000),
        # Rounded: DynamoDB refuses magnitudes below 1e-130 (test_backing_stores covers that).
        "tx_sum_1h": st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(
            lambda x: round(x, 6)
        ),
        "is_premium": st.integers(0, 1),
    },
).filter(bool)


@st.composite
def rows_and_cuts(draw: st.DrawFn, cell: st.SearchStrategy[Any]) -> tuple[list[Any], int, int]:
    """Rows ``(entity, seconds ago, cell)`` at distinct times, a chunk size, a producer cut."""
    count = draw(st.integers(1, 14))
    ages = draw(st.lists(st.integers(1, 3000), min_size=count, max_size=count, unique=True))
    rows = [(draw(st.sampled_from(ENTITIES)), age, draw(cell)) for age in ages]
    return rows, draw(st.integers(1, count)), draw(st.integers(0, count))


@pytest.fixture(params=["sqlite", "dynamodb"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackingStore]:
    store: BackingStore
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "backing.sqlite3")
    else:
        store = DynamoDbStore(request.getfixturevalue("dynamodb_table"), dynamodb_client())
    yield store
    store.close()


@pytest.fixture
def redis_store(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings, for_writes=True))
    yield store
    store.close()


def load(
    tmp_path: Path,
    columns: dict[str, list[Any]],
    group_name: str,
    store: WriteThrough,
    chunk: int,
    cut: int,
) -> None:
    """Materialize the table ``columns`` as two producers: rows before ``cut``, then the rest."""
    group = EXAMPLE_REGISTRY.group("user", group_name)
    for part in (slice(0, cut), slice(cut, None)):
        table = pa.table({name: values[part] for name, values in columns.items()})
        if table.num_rows == 0:
            continue
        path = tmp_path / f"{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path)
        report = materialize(open_table(path), group, store, chunk_rows=chunk)
        assert report.rows == table.num_rows and report.rows_rejected == 0


@BOUNDED
@given(drawn=rows_and_cuts(field_values))
def test_hash_fields_end_at_their_newest_values(
    drawn: tuple[list[tuple[str, int, dict[str, Any]]], int, int],
    tmp_path: Path,
    redis_store: RedisStore,
    redis_client: redis.Redis,
    backing: BackingStore,
) -> None:
    rows, chunk, cut = drawn
    prefix = uuid.uuid4().hex[:8]
    now = int(time.time())
    newest: dict[str, dict[str, tuple[int, Any]]] = {}
    for entity, age, values in rows:
        for name, value in values.items():
            held = newest.setdefault(entity, {}).get(name)
            if held is None or held[0] < now - age:
                newest[entity][name] = (now - age, value)
    columns: dict[str, list[Any]] = {
        "entity_id": [prefix + entity for entity, _, _ in rows],
        "event_timestamp": [now - age for _, age, _ in rows],
        **{name: [values.get(name) for _, _, values in rows] for name in FIELDS},
    }
    store = WriteThrough(redis_store, backing)
    load(tmp_path, columns, "features", store, chunk, cut)
    for entity, fields in newest.items():
        expected = {name: value for name, (_, value) in fields.items()}
        event_ms = max(at for at, _ in fields.values()) * 1000
        request = ReadRequest(prefix + entity, FEATURES, FIELDS)
        assert backing.read([request]) == [expected]
        assert redis_store.read([request]) == [expected]
        key = f"user:{{{prefix}{entity}}}:features"
        assert redis_client.hget(key, EVENT_MS_FIELD) == b"%d" % event_ms
        [update] = [u for u in backing.scan(FEATURES) if u.entity_id == prefix + entity]
        assert update.event_ms == event_ms
        assert {name: update.ms_of(name) for name in fields} == {
            name: at * 1000 for name, (at, _) in fields.items()
        }


@BOUNDED
@given(drawn=rows_and_cuts(st.sampled_from([f"i{n}" for n in range(14)])))
def test_sorted_sets_end_at_their_newest_members(
    drawn: tuple[list[tuple[str, int, str]], int, int],
    tmp_path: Path,
    redis_store: RedisStore,
    backing: BackingStore,
) -> None:
    rows, chunk, cut = drawn
    prefix = uuid.uuid4().hex[:8]
    now = int(time.time())
    scores: dict[str, dict[str, int]] = {}
    for entity, age, item in rows:
        held = scores.setdefault(entity, {})
        held[item] = max(held.get(item, 0), now - age)
    columns: dict[str, list[Any]] = {
        "entity_id": [prefix + entity for entity, _, _ in rows],
        "event_timestamp": [now - age for _, age, _ in rows],
        "recent_items": [item for _, _, item in rows],
    }
    store = WriteThrough(redis_store, backing)
    load(tmp_path, columns, "recent_items", store, chunk, cut)
    top_n = RECENT.top_n or 1
    for entity, members in scores.items():
        by_score = sorted(((at, member) for member, at in members.items()), reverse=True)
        expected = tuple(member for _, member in by_score[:top_n])
        request = ReadRequest(prefix + entity, RECENT, RECENT.feature_names)
        assert redis_store.read([request]) == [{"recent_items": expected}]
        assert backing.read([request]) == [{"recent_items": expected}]
