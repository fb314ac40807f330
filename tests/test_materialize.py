"""`featserve materialize` on a real Redis: values, TTLs, merging, rejects, accounting, re-runs."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
import time
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features.ingest.materialize import Materialization, materialize
from features.ingest.tables import open_table
from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import ReadRequest
from features.stores.redis import RedisStore, sync_client
from features.stores.sqlite import SqliteStore
from features.stores.write_through import WriteThrough
from service.cli import main
from service.harness.example import EXAMPLE_REGISTRY, example_module
from service.harness.local_redis import LocalRedis
from tests.support.redis_state import redis_state

NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
write_demo_tables = example_module("demo_tables").write_demo_tables
FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields = list(dict.fromkeys(name for row in rows for name in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(table: Path, redis_url: str, *extra: str) -> int:
    return main(["materialize", str(table), "--redis-url", redis_url, *extra])


def run_json(
    capsys: pytest.CaptureFixture[str], table: Path, redis_url: str, *extra: str
) -> tuple[int, dict[str, Any]]:
    """Run with ``--json``; the exit code and the summary it printed."""
    capsys.readouterr()
    code = run(table, redis_url, "--json", *extra)
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert summary["exit_code"] == code
    return code, summary


def accounted(summary: dict[str, Any]) -> int:
    return sum(summary[k] for k in ("written", "skipped_older", "expired", "rejected"))


def rejects_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {r["row"]: r for r in csv.DictReader(handle)}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_demo_tables_land_with_values_and_ttls(
    fmt: str, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    paths = write_demo_tables(tmp_path, 50, NOW, fmt=fmt)
    for name, path in paths.items():
        assert run(path, redis_url, "--group", f"user:{name}") == 0
    for group_name in ("features", "recent_items", "embedding"):
        group = EXAMPLE_REGISTRY.group("user", group_name)
        for i in (0, 49):
            key = f"user:{{u{i:06d}}}:{group_name}"
            newest_s = float(NOW)
            if group_name == "recent_items":
                newest_s = float(redis_client.zrevrange(key, 0, 0, withscores=True)[0][1])
            left_ms = (newest_s + group.ttl.total_seconds() - time.time()) * 1000
            assert left_ms - 60_000 < redis_client.pttl(key) <= left_ms + 1
    assert redis_client.zcard("user:{u000007}:recent_items") == 10
    assert len(redis_client.get("user:{u000007}:embedding") or b"") == 64
    # The values of the table, read with pyarrow or csv, not through featserve's decoders.
    if fmt == "parquet":
        row = pq.read_table(paths["features"]).slice(7, 1).to_pylist()[0]
    else:
        with paths["features"].open(newline="") as handle:
            row = list(csv.DictReader(handle))[7]
    assert row["entity_id"] == "u000007"
    stored = redis_client.hgetall("user:{u000007}:features")
    for name in FEATURES.feature_names:
        assert float(stored[name.encode()]) == float(row[name]), name


def test_the_newest_value_per_field_wins_whatever_the_order_and_chunking(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows = [
        {"entity_id": "a", "event_timestamp": NOW - 5, "tx_count_1h": 5, "tx_sum_1h": 1.5},
        {"entity_id": "b", "event_timestamp": NOW - 10, "tx_count_1h": 1, "tx_sum_1h": ""},
        {"entity_id": "a", "event_timestamp": NOW - 1, "tx_count_1h": 9, "tx_sum_1h": ""},
        {"entity_id": "a", "event_timestamp": NOW - 9, "tx_count_1h": 1, "tx_sum_1h": 7.0},
        {"entity_id": "b", "event_timestamp": NOW - 13, "tx_count_1h": 7, "tx_sum_1h": 2.5},
    ]
    table = write_csv(tmp_path / "t.csv", rows)
    assert run(table, redis_url, "--chunk-rows", "2") == 0
    assert redis_client.hmget("user:{a}:features", "tx_count_1h", "tx_sum_1h") == [b"9", b"1.5"]
    assert redis_client.hmget("user:{b}:features", "tx_count_1h", "tx_sum_1h") == [b"1", b"2.5"]


def test_rows_of_one_entity_with_different_fields_both_land(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [
        {"entity_id": "w001", "event_timestamp": NOW - 120, "tx_count_1h": 5, "tx_sum_1h": ""},
        {"entity_id": "w001", "event_timestamp": NOW - 60, "tx_count_1h": "", "tx_sum_1h": 10.5},
    ]
    code, summary = run_json(capsys, write_csv(tmp_path / "t.csv", rows), redis_url)
    assert code == 0
    assert (summary["rows"], summary["written"], summary["entity_groups_written"]) == (2, 2, 1)
    assert redis_client.hmget("user:{w001}:features", "tx_count_1h", "tx_sum_1h") == [
        b"5",
        b"10.5",
    ]


def test_ttl_counts_from_the_event_and_expired_rows_are_counted_not_written(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = time.time()
    rows = [
        {"entity_id": "aged", "event_timestamp": now - 5400, "tx_count_1h": 1},
        {"entity_id": "gone", "event_timestamp": now - 3 * 3600, "tx_count_1h": 2},
    ]
    code, summary = run_json(capsys, write_csv(tmp_path / "t.csv", rows), redis_url)
    assert code == 0
    assert (summary["written"], summary["expired"]) == (1, 1)
    # 1.5 h old in a 2 h group: about half an hour left.
    assert 1740_000 < redis_client.pttl("user:{aged}:features") <= 1800_000
    assert redis_client.exists("user:{gone}:features") == 0


def test_a_row_dated_ahead_is_rejected_and_written_nowhere(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows = [
        {"entity_id": "ahead", "event_timestamp": NOW + 86400, "tx_count_1h": 1},
        {"entity_id": "skewed", "event_timestamp": NOW + 60, "tx_count_1h": 2},
    ]
    rejects = tmp_path / "rejects.csv"
    assert run(write_csv(tmp_path / "t.csv", rows), redis_url, "--rejects", str(rejects)) == 1
    [refused] = rejects_of(rejects).values()
    assert (refused["row"], refused["field"]) == ("1", "event_timestamp")
    assert "s ahead of now; at most 300 s ahead is accepted" in refused["problem"]
    assert redis_client.keys() == [b"user:{skewed}:features"]


def test_thousands_of_items_of_one_entity_in_one_chunk_keep_the_newest(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [
        {"entity_id": "heavy", "event_timestamp": NOW - 5000 + i, "recent_items": f"i{i:05d}"}
        for i in range(4100)
    ]
    table = write_csv(tmp_path / "items.csv", rows)
    code, summary = run_json(capsys, table, redis_url, "--group", "user:recent_items")
    assert code == 0
    assert (summary["written"], summary["skipped_older"]) == (10, 4090)
    newest = redis_client.zrevrange("user:{heavy}:recent_items", 0, -1)
    assert newest == [f"i{i:05d}".encode() for i in range(4099, 4089, -1)]


def test_rejected_rows_are_reported_with_reasons_and_written_nowhere(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    rows: list[dict[str, Any]] = [
        {"entity_id": "good", "event_timestamp": NOW, "tx_count_1h": "3", "tx_sum_1h": "1"},
        {"entity_id": "bad id", "event_timestamp": NOW, "tx_count_1h": "3", "tx_sum_1h": ""},
        {"entity_id": "neg", "event_timestamp": NOW, "tx_count_1h": "-2", "tx_sum_1h": ""},
        {"entity_id": "txt", "event_timestamp": NOW, "tx_count_1h": "lots", "tx_sum_1h": ""},
        {"entity_id": "when", "event_timestamp": "soon", "tx_count_1h": "1", "tx_sum_1h": ""},
        {"entity_id": "null", "event_timestamp": NOW, "tx_count_1h": "", "tx_sum_1h": ""},
        {"entity_id": "huge", "event_timestamp": NOW, "tx_count_1h": "", "tx_sum_1h": "9" * 400},
    ]
    table = write_csv(tmp_path / "t.csv", rows)
    rejects = tmp_path / "rejects.csv"
    assert run(table, redis_url, "--rejects", str(rejects)) == 1
    assert redis_client.keys("*") == [b"user:{good}:features"]
    refused = rejects_of(rejects)
    assert {row: r["field"] for row, r in refused.items()} == {
        "2": "entity_id",
        "3": "tx_count_1h",
        "4": "tx_count_1h",
        "5": "event_timestamp",
        "6": "values",
        "7": "tx_sum_1h",
    }
    assert "below the minimum 0" in refused["3"]["problem"]
    assert json.loads(refused["4"]["record"])["tx_count_1h"] == "lots"


def test_malformed_csv_lines_are_rejects_and_the_rest_loads(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = tmp_path / "t.csv"
    table.write_bytes(
        b"entity_id,event_timestamp,tx_count_1h\n"
        + b"a,%d,1\n" % NOW
        + b"b,%d\n" % NOW  # a cell short
        + b"c,%d,3,extra\n" % NOW  # a cell too many
        + b"d\xff,%d,4\n" % NOW  # not UTF-8
        + b"e,%d,5\n" % NOW
    )
    rejects = tmp_path / "rejects.csv"
    code, summary = run_json(capsys, table, redis_url, "--rejects", str(rejects))
    assert code == 1
    assert (summary["rows"], summary["written"], summary["rejected"]) == (5, 2, 3)
    refused = rejects_of(rejects)
    assert {row: r["field"] for row, r in refused.items()} == {
        "2": "row",
        "3": "row",
        "4": "entity_id",
    }
    assert refused["2"]["problem"] == "expected 3 cells, got 2"
    assert json.loads(refused["3"]["record"]) == {"line": f"c,{NOW},3,extra"}
    assert sorted(redis_client.keys()) == [b"user:{a}:features", b"user:{e}:features"]


def test_parquet_timestamps_and_float_int_columns_are_read(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    table = pa.table(
        {
            "entity_id": ["a", "b", "c"],
            "event_timestamp": pa.array(
                [NOW * 1_000_000, None, 300_000_000_000_000_000], pa.timestamp("us")
            ),
            "tx_count_1h": pa.array([3.0, 1.0, 1.0], pa.float64()),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert run(path, redis_url, "--allow-rejects") == 0
    assert redis_client.hgetall("user:{a}:features") == {
        b"tx_count_1h": b"3",
        b"_event_ms": b"%d" % (NOW * 1000),
    }
    # No time, and a time in the year 11,476: rejected, not a crash of the whole chunk.
    assert redis_client.exists("user:{b}:features", "user:{c}:features") == 0


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
    table = write_csv(tmp_path / "t.csv", [columns])
    assert run(table, redis_url) == 2
    assert message in capsys.readouterr().err
    assert redis_client.dbsize() == 0
    assert not table.with_name("t.csv.rejects.csv").exists()


def test_a_rerun_changes_nothing_and_an_interrupted_run_completes(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis
) -> None:
    path = write_demo_tables(tmp_path, 300, NOW)["features"]
    store = RedisStore(sync_client(settings, for_writes=True))
    materialize(open_table(path), FEATURES, store, chunk_rows=100)
    complete = redis_state(redis_client)
    report = materialize(open_table(path), FEATURES, store, chunk_rows=100)
    # Equal event times are written again: every row lands, and nothing changes.
    assert (report.written, report.skipped_older, report.entity_groups_written) == (300, 0, 300)
    assert redis_state(redis_client) == complete

    redis_client.flushdb()

    class Killed(Exception):
        pass

    def kill_after_first_chunk(rows: int) -> None:
        raise Killed

    run = Materialization(
        open_table(path), FEATURES, store, chunk_rows=100, on_progress=kill_after_first_chunk
    )
    with pytest.raises(Killed):
        run.run()
    assert run.report.stopped is not None and run.report.stopped.cause == "crash"
    assert (run.report.rows, run.report.stopped.before_row) == (100, 101)
    assert 0 < redis_client.dbsize() < 300
    materialize(open_table(path), FEATURES, store, chunk_rows=100)
    assert redis_state(redis_client) == complete
    store.close()


def test_a_redis_lost_midway_stops_the_run_saying_where_and_that_rerunning_is_safe(
    tmp_path: Path, own_redis: LocalRedis
) -> None:
    rows = [{"entity_id": f"u{i}", "event_timestamp": NOW - i, "tx_count_1h": i} for i in range(30)]
    rows[3]["tx_count_1h"] = -1  # a reject in the first chunk
    table = open_table(write_csv(tmp_path / "t.csv", rows))
    store = RedisStore(sync_client(Settings(redis_url=own_redis.url), for_writes=True))
    rejected: list[int] = []
    run = Materialization(
        table,
        FEATURES,
        store,
        chunk_rows=10,
        on_reject=lambda r: rejected.append(r.row),
        on_progress=lambda _: own_redis.kill(),
    )
    report = run.run()
    store.close()
    assert report.stopped is not None
    assert (report.stopped.cause, report.stopped.retry_safe) == ("store", True)
    assert report.rows == report.stopped.before_row - 1 == 10
    assert (report.written, report.rows_rejected, rejected) == (9, 1, [4])


def test_the_command_exits_3_when_redis_is_down_and_reports_where_it_stopped(
    tmp_path: Path, own_redis: LocalRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"entity_id": "a", "event_timestamp": NOW, "tx_count_1h": 1}]
    url = own_redis.url
    own_redis.stop()
    code, summary = run_json(capsys, write_csv(tmp_path / "t.csv", rows), url)
    assert code == 3
    assert summary["rows"] == 0
    assert summary["stopped"]["before_row"] == 1
    assert summary["stopped"]["retry_safe"] is True


def test_a_frozen_redis_is_a_timeout_safe_to_retry(
    tmp_path: Path,
    own_redis: LocalRedis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEATSERVE_REDIS_WRITE_TIMEOUT_MS", "200")
    rows = [{"entity_id": "a", "event_timestamp": NOW, "tx_count_1h": 1}]
    table = write_csv(tmp_path / "t.csv", rows)
    own_redis.pause()
    try:
        code, summary = run_json(capsys, table, own_redis.url)
    finally:
        own_redis.resume()
    assert code == 3
    assert summary["stopped"]["retry_safe"] is True
    assert "did not answer in time" in summary["stopped"]["error"]


def test_a_read_only_replica_is_a_failover_safe_to_retry(
    tmp_path: Path, own_redis: LocalRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalRedis() as primary, redis.Redis.from_url(own_redis.url) as replica:
        replica.replicaof("127.0.0.1", primary.port)
        rows = [{"entity_id": "a", "event_timestamp": NOW, "tx_count_1h": 1}]
        code, summary = run_json(capsys, write_csv(tmp_path / "t.csv", rows), own_redis.url)
        replica.replicaof("NO", "ONE")
    assert code == 3
    assert summary["stopped"]["retry_safe"] is True
    assert "READONLY" in summary["stopped"]["error"] or "read only" in summary["stopped"]["error"]


def test_keys_redis_cannot_merge_into_are_rejects_and_the_other_rows_land(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    redis_client.set("user:{string}:features", "not a hash")
    redis_client.hset("user:{badtime}:features", mapping={"_event_ms": "soon", "tx_count_1h": 1})
    rows = [
        {"entity_id": entity, "event_timestamp": NOW, "tx_count_1h": 7}
        for entity in ("ok1", "string", "badtime", "ok2")
    ]
    rejects = tmp_path / "rejects.csv"
    code, summary = run_json(
        capsys, write_csv(tmp_path / "t.csv", rows), redis_url, "--rejects", str(rejects)
    )
    assert code == 1  # rejects, not a store failure: re-running would not help
    assert (summary["written"], summary["rejected_by_field"]) == (2, {"store": 2})
    refused = rejects_of(rejects)
    assert "WRONGTYPE user:{string}:features holds a string, not a hash" in refused["2"]["problem"]
    assert "BADEVENTTIME user:{badtime}:features holds _event_ms = soon" in refused["3"]["problem"]
    assert redis_client.hget("user:{ok2}:features", "tx_count_1h") == b"7"
    assert redis_client.get("user:{string}:features") == b"not a hash"


def test_every_row_is_accounted_for_whatever_goes_wrong_with_it(
    tmp_path: Path,
    settings: Settings,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A generated table with every fault class, shuffled, in chunks of 7 rows."""
    now = int(time.time())
    backing_path = tmp_path / "backing.sqlite3"
    held_redis = RedisStore(sync_client(settings, for_writes=True))
    held_backing = SqliteStore(backing_path)
    held = WriteThrough(held_redis, held_backing)
    units: list[list[tuple[str, bytes]]] = []  # rows that must stay in order, with their fate

    def unit(*rows: tuple[str, str]) -> None:
        units.append([(fate, line.encode()) for fate, line in rows])

    for i in range(40):
        unit(("written", f"w{i},{now - 60 - i},{i},"))
    for i in range(15):  # the newer row first: the older is superseded, in the chunk or after
        unit(("written", f"s{i},{now - 10},1,"), ("skipped", f"s{i},{now - 20},2,"))
    for i in range(10):  # different fields of one entity: both land
        unit(("written", f"m{i},{now - 20},1,"), ("written", f"m{i},{now - 10},,2.5"))
    for i in range(10):  # the stores hold a newer value
        held.write([parse_update(FEATURES, f"h{i}", now - 5, {"tx_count_1h": 9})])
        unit(("skipped", f"h{i},{now - 30},1,"))
    for i in range(10):
        unit(("expired", f"x{i},{now - 3 * 3600},1,"))
    for i in range(5):
        unit(("event_timestamp", f"f{i},{now + 86400},1,"))
        unit(("entity_id", f"bad id{i},{now},1,"))
        unit(("tx_count_1h", f"t{i},{now},lots,"))
        unit(("tx_count_1h", f"n{i},{now},-1,"))
        unit(("values", f"z{i},{now},,"))
        unit(("row", f"r{i},{now},1,2,3"))
    for i in range(3):
        units.append([("entity_id", b"\xffu%d,%d,1," % (i, now))])
        redis_client.set(f"user:{{wrongtype{i}}}:features", "a string")
        unit(("store", f"wrongtype{i},{now},1,"))
        redis_client.hset(f"user:{{badtime{i}}}:features", "_event_ms", "soon")
        unit(("store", f"badtime{i},{now},1,"))
        held.write([parse_update(FEATURES, f"unreadable{i}", now - 5, {"tx_count_1h": 9})])
        unit(("store", f"unreadable{i},{now},1,"))
    held_redis.close()
    held_backing.close()
    with closing(sqlite3.connect(backing_path)) as db, db:
        db.execute("UPDATE feature_groups SET vals = 'not json' WHERE key LIKE '%unreadable%'")
    random.Random(13).shuffle(units)
    rows = [row for rows in units for row in rows]
    table = tmp_path / "faults.csv"
    table.write_bytes(
        b"entity_id,event_timestamp,tx_count_1h,tx_sum_1h\n"
        + b"".join(line + b"\n" for _, line in rows)
    )
    rejects = tmp_path / "rejects.csv"
    code, summary = run_json(
        capsys,
        table,
        settings.redis_url or "",
        "--backing",
        f"sqlite:{backing_path}",
        "--chunk-rows",
        "7",
        "--rejects",
        str(rejects),
    )
    fates = Counter(fate for fate, _ in rows)
    assert code == 1
    assert summary["rows"] == len(rows) == accounted(summary) == 152
    assert (summary["written"], summary["skipped_older"], summary["expired"]) == (75, 25, 10)
    assert summary["rejected_by_field"] == {
        fate: n for fate, n in fates.items() if fate not in ("written", "skipped", "expired")
    }
    assert {int(row): r["field"] for row, r in rejects_of(rejects).items()} == {
        number: fate
        for number, (fate, _) in enumerate(rows, start=1)
        if fate not in ("written", "skipped", "expired")
    }
    with closing(SqliteStore(backing_path)) as backing:
        for store in (RedisStore(sync_client(settings)), backing):
            found = store.read(
                [
                    *(ReadRequest(f"w{i}", FEATURES, ("tx_count_1h",)) for i in range(40)),
                    *(ReadRequest(f"s{i}", FEATURES, ("tx_count_1h",)) for i in range(15)),
                    *(
                        ReadRequest(f"m{i}", FEATURES, ("tx_count_1h", "tx_sum_1h"))
                        for i in range(10)
                    ),
                    *(ReadRequest(f"h{i}", FEATURES, ("tx_count_1h",)) for i in range(10)),
                    *(ReadRequest(f"x{i}", FEATURES, ("tx_count_1h",)) for i in range(10)),
                ]
            )
            assert found == [
                *({"tx_count_1h": i} for i in range(40)),
                *[{"tx_count_1h": 1}] * 15,
                *[{"tx_count_1h": 1, "tx_sum_1h": 2.5}] * 10,
                *[{"tx_count_1h": 9}] * 10,
                *[None] * 10,
            ]


def test_csv_times_in_iso_8601_and_columns_of_other_names(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    base = datetime.fromtimestamp(NOW - 600, UTC).replace(microsecond=0)
    later = base + timedelta(seconds=90)
    rows = [
        # An offset, a Z and a naive time (read as UTC) all name instants.
        {"user": "iso1", "at": base.astimezone(timezone(timedelta(hours=2))).isoformat(),
         "tx_count_1h": 1},
        {"user": "iso2", "at": later.isoformat().replace("+00:00", "Z"), "tx_count_1h": 2},
        {"user": "iso3", "at": later.replace(tzinfo=None).isoformat(), "tx_count_1h": 3},
        {"user": "iso4", "at": "yesterday", "tx_count_1h": 4},
    ]  # fmt: skip
    table = write_csv(tmp_path / "iso.csv", rows)
    assert run(table, redis_url) == 2  # without the flags the columns are missing
    assert redis_client.dbsize() == 0
    columns = ("--entity-column", "user", "--timestamp-column", "at")
    code, summary = run_json(capsys, table, redis_url, *columns)
    assert (code, summary["written"], summary["rejected_by_field"]) == (
        1,
        3,
        {"event_timestamp": 1},
    )
    base_ms, later_ms = int(base.timestamp()) * 1000, int(later.timestamp()) * 1000
    for entity_id, event_ms, count in (("iso1", base_ms, 1), ("iso2", later_ms, 2),
                                       ("iso3", later_ms, 3)):  # fmt: skip
        held = redis_client.hgetall(f"user:{{{entity_id}}}:features")
        assert held == {b"tx_count_1h": str(count).encode(), b"_event_ms": str(event_ms).encode()}
    assert redis_client.exists("user:{iso4}:features") == 0


def test_reading_a_parquet_table_holds_about_one_chunk_not_the_file(tmp_path: Path) -> None:
    """Peak memory must not grow with the table: the reader reads one row group at a time (a
    reader that buffers the column chunks ahead holds the whole file from the first chunk)."""
    path = tmp_path / "wide.parquet"
    rows = 40 * 2_000
    values = random.Random(7)
    pq.write_table(
        pa.table(
            {
                "entity_id": [f"u{i:07d}" for i in range(rows)],
                "event_timestamp": [1_700_000_000 + i for i in range(rows)],
                "tx_sum_1h": [values.random() for _ in range(rows)],
            }
        ),
        path,
        row_group_size=2_000,
    )
    assert path.stat().st_size > 1_000_000
    before = pa.total_allocated_bytes()
    chunks = open_table(path).chunks(("entity_id", "event_timestamp", "tx_sum_1h"), 2_000)
    held = [pa.total_allocated_bytes() - before for _ in chunks]
    assert len(held) == 40
    # A decoded row group is about 2,000 x 28 bytes.
    assert max(held) < 300_000
