"""`featserve materialize` on a real Redis: values, TTLs, ordering, rejects, re-runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features.ingest.materialize import materialize
from features.ingest.tables import open_table
from features.registry import FRAUD_REGISTRY
from features.settings import Settings
from features.stores.redis import RedisStore, sync_client
from models.demo_tables import write_demo_tables
from service.cli import main
from tests.support.redis_state import redis_state

NOW = 1764230400
FEATURES = FRAUD_REGISTRY.group("user", "features")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(table: Path, redis_url: str, *extra: str) -> int:
    return main(["materialize", str(table), "--redis-url", redis_url, *extra])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_demo_tables_land_with_values_and_ttls(
    fmt: str, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    paths = write_demo_tables(tmp_path, 50, NOW, fmt=fmt)  # type: ignore[arg-type]
    for name, path in paths.items():
        assert run(path, redis_url, "--group", f"user:{name}") == 0
    source = pq.read_table(paths["features"]) if fmt == "parquet" else None
    for group_name in ("features", "recent_items", "embedding"):
        group = FRAUD_REGISTRY.group("user", group_name)
        ttl_ms = group.ttl.total_seconds() * 1000
        for i in (0, 49):
            ttl = redis_client.pttl(f"user:{{u{i:06d}}}:{group_name}")
            assert ttl_ms - 60_000 < ttl <= ttl_ms
    assert redis_client.zcard("user:{u000007}:recent_items") == 10
    assert len(redis_client.get("user:{u000007}:embedding") or b"") == 64
    if source is not None:
        row = source.slice(7, 1).to_pylist()[0]
        stored = redis_client.hgetall("user:{u000007}:features")
        for name in FEATURES.feature_names:
            assert stored[name.encode()] == FEATURES.by_name[name].dtype.encode(row[name])


def test_the_newest_row_per_entity_wins_whatever_the_order_and_chunking(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows = [
        {"entity_id": "a", "event_timestamp": NOW + 5, "tx_count_1h": 5},
        {"entity_id": "b", "event_timestamp": NOW, "tx_count_1h": 1},
        {"entity_id": "a", "event_timestamp": NOW + 9, "tx_count_1h": 9},
        {"entity_id": "a", "event_timestamp": NOW + 1, "tx_count_1h": 1},
        {"entity_id": "b", "event_timestamp": NOW - 3, "tx_count_1h": 7},
    ]
    table = write_csv(tmp_path / "t.csv", rows)
    assert run(table, redis_url, "--chunk-rows", "2") == 0
    assert redis_client.hget("user:{a}:features", "tx_count_1h") == b"9"
    assert redis_client.hget("user:{b}:features", "tx_count_1h") == b"1"


def test_rejected_rows_are_reported_with_reasons_and_written_nowhere(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows: list[dict[str, Any]] = [
        {
            "entity_id": "good",
            "event_timestamp": NOW,
            "tx_count_1h": "3",
            "credit_score_bucket": "1",
        },
        {
            "entity_id": "bad id",
            "event_timestamp": NOW,
            "tx_count_1h": "3",
            "credit_score_bucket": "",
        },
        {
            "entity_id": "neg",
            "event_timestamp": NOW,
            "tx_count_1h": "-2",
            "credit_score_bucket": "",
        },
        {
            "entity_id": "txt",
            "event_timestamp": NOW,
            "tx_count_1h": "lots",
            "credit_score_bucket": "",
        },
        {
            "entity_id": "when",
            "event_timestamp": "soon",
            "tx_count_1h": "1",
            "credit_score_bucket": "",
        },
        {"entity_id": "null", "event_timestamp": NOW, "tx_count_1h": "", "credit_score_bucket": ""},
    ]
    table = write_csv(tmp_path / "t.csv", rows)
    rejects = tmp_path / "rejects.csv"
    assert run(table, redis_url, "--rejects", str(rejects)) == 1
    assert redis_client.keys("*") == [b"user:{good}:features"]
    with rejects.open() as handle:
        refused = {r["row"]: r for r in csv.DictReader(handle)}
    assert {row: r["field"] for row, r in refused.items()} == {
        "2": "entity_id",
        "3": "tx_count_1h",
        "4": "tx_count_1h",
        "5": "event_timestamp",
        "6": "values",
    }
    assert "below the minimum 0" in refused["3"]["problem"]
    assert json.loads(refused["4"]["record"])["tx_count_1h"] == "lots"


def test_allow_rejects_exits_zero(tmp_path: Path, redis_url: str) -> None:
    rows = [{"entity_id": "x y", "event_timestamp": NOW, "tx_count_1h": 1}]
    assert run(write_csv(tmp_path / "t.csv", rows), redis_url, "--allow-rejects") == 0


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"entity_id": "a", "event_timestamp": NOW, "velocity": 1}, "not features"),
        ({"entity_id": "a", "tx_count_1h": 1}, "missing column"),
    ],
)
def test_unknown_or_missing_columns_stop_before_writing(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    columns: dict[str, Any],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(write_csv(tmp_path / "t.csv", [columns]), redis_url) == 2
    assert message in capsys.readouterr().err
    assert redis_client.dbsize() == 0


def test_a_rerun_changes_nothing_and_an_interrupted_run_completes(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis
) -> None:
    path = write_demo_tables(tmp_path, 300, NOW)["features"]
    store = RedisStore(sync_client(settings, for_writes=True))
    materialize(open_table(path), FEATURES, store, chunk_rows=100)
    complete = redis_state(redis_client)
    report = materialize(open_table(path), FEATURES, store, chunk_rows=100)
    assert (report.applied, report.stale) == (300, 0)
    assert redis_state(redis_client) == complete

    redis_client.flushdb()

    class Killed(Exception):
        pass

    def kill_after_first_chunk(rows: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        materialize(
            open_table(path), FEATURES, store, chunk_rows=100, on_progress=kill_after_first_chunk
        )
    assert 0 < redis_client.dbsize() < 300
    materialize(open_table(path), FEATURES, store, chunk_rows=100)
    assert redis_state(redis_client) == complete
    store.close()


def test_parquet_timestamps_and_float_int_columns_are_read(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    table = pa.table(
        {
            "entity_id": ["a", "b"],
            "event_timestamp": pa.array([NOW * 1_000_000, None], pa.timestamp("us")),
            "tx_count_1h": pa.array([3.0, 1.0], pa.float64()),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert run(path, redis_url, "--allow-rejects") == 0
    assert redis_client.hgetall("user:{a}:features") == {
        b"tx_count_1h": b"3",
        b"_event_ms": b"%d" % (NOW * 1000),
    }
    assert redis_client.exists("user:{b}:features") == 0
