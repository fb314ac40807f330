"""The one writer (``features.ingest.writer``): many entities per script call, and the very state
that one script call per entity leaves."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features.ingest.materialize import materialize
from features.ingest.tables import open_table
from features.ingest.updates import parse_update
from features.keys import feature_key
from features.stores.redis import RedisStore
from service.harness.example import EXAMPLE_REGISTRY
from tests.support.redis_state import redis_state

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
NOW = int(time.time())


@pytest.fixture
def other_db(redis_url: str) -> Iterator[redis.Redis]:
    """Database 1 of the same server, empty: the reference writes go there."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def table_rows(count: int, entities: int, seed: int) -> list[dict[str, Any]]:
    """Rows of a few entities each, some values null, event times apart and equal."""
    draw = random.Random(seed)
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {
            "entity_id": f"w{draw.randrange(entities):04d}",
            "event_timestamp": NOW - draw.choice([5, 60, 60, 3000]),
        }
        row["tx_count_1h"] = draw.choice([None, draw.randrange(100)])
        row["tx_sum_1h"] = draw.choice([None, round(draw.uniform(0, 1e4), 2)])
        row["is_premium"] = draw.randrange(2)
        rows.append(row)
    return rows


def state_with_expiry(client: redis.Redis) -> dict[bytes, Any]:
    return {
        key: (value, client.pexpiretime(key.decode())) for key, value in redis_state(client).items()
    }


def test_a_chunk_is_written_in_one_script_call_per_hundred_keys(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows(1000, 1000, seed=1)), path)
    distinct = len(set(pq.read_table(path, columns=["entity_id"]).column(0).to_pylist()))
    store = RedisStore(redis_client, keys_per_call=100)
    redis_client.config_resetstat()
    report = materialize(open_table(path), FEATURES, store, chunk_rows=10_000)
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert report.entity_groups_written == distinct
    assert calls == -(-distinct // 100)


@pytest.mark.parametrize("seed", [2, 3])
def test_the_state_is_what_one_script_call_per_entity_leaves(
    seed: int,
    tmp_path: Path,
    redis_client: redis.Redis,
    other_db: redis.Redis,
) -> None:
    # Held before: some entities written earlier with other fields and times, so the script
    # merges into hashes with fields of their own times as well as into empty ones.
    earlier = table_rows(300, 40, seed)
    later = table_rows(600, 60, seed + 100)
    updates = []
    for row in [*earlier, *later]:
        values = {k: v for k, v in row.items() if k not in ("entity_id", "event_timestamp")}
        if any(v is not None for v in values.values()):
            updates.append(parse_update(FEATURES, row["entity_id"], row["event_timestamp"], values))
    # The reference: the per-entity script (HASH_WRITE), one update at a time, in row order.
    reference = RedisStore(other_db)
    for update in updates:
        reference.write([update])
    for index, rows in enumerate((earlier, later)):
        path = tmp_path / f"t{index}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        materialize(
            open_table(path), FEATURES, RedisStore(redis_client, keys_per_call=7), chunk_rows=97
        )
    written = state_with_expiry(redis_client)
    assert len(written) >= 40
    assert any(b"_event_ms:tx_count_1h" in value for value, _ in written.values())
    assert written == state_with_expiry(other_db)


FLOATS = [
    0.0,
    4051.0,
    194.05,
    0.1 + 0.2,
    1 / 3,
    1e-4,
    9.999999999999999e-05,
    1.5e-05,
    5e-324,
    123456789012345.6,
    1e13,
    1e15,
    2.0**53 - 1,
    2.0**52 + 0.5,
]


def test_float_values_are_kept_as_python_writes_them(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Redis keeps the text float.__repr__ writes, whole numbers, tiny and huge ones included.
    ids = [f"f{index:03d}" for index in range(len(FLOATS))]
    rows = [
        {"entity_id": entity_id, "event_timestamp": NOW, "tx_sum_1h": value}
        for entity_id, value in zip(ids, FLOATS, strict=True)
    ]
    path = tmp_path / "floats.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = materialize(open_table(path), FEATURES, RedisStore(redis_client))
    assert report.written == len(FLOATS)
    kept = [
        redis_client.hget(feature_key("user", entity_id, "features"), "tx_sum_1h")
        for entity_id in ids
    ]
    assert kept == [repr(value).encode() for value in FLOATS]
