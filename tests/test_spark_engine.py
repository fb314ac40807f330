"""``featserve materialize --engine spark``: Spark in local mode, real Redis servers.

The Spark run must leave Redis exactly as the single process does (every key, field, hidden
event time and expiry time), into a Redis Cluster, while a task fails midway and Spark runs it
again; every row must be accounted for across partitions; rejects go to a dataset with their
reasons; Redis' password must show nowhere Spark records the job.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features.ingest.materialize import Materialization
from features.ingest.spark_engine import materialize_dataframe, read_table
from features.ingest.tables import open_table
from features.ingest.writer import ChunkTally
from features.settings import Settings
from features.stores.factory import open_online_store
from service.cli import main
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis, free_port
from tests.support.redis_state import redis_state

pyspark_sql = pytest.importorskip("pyspark.sql")

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
NOW = int(time.time())
PASSWORD = "spark-must-not-see-Zq7"


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark-events")


@pytest.fixture(scope="module")
def spark(event_log: Path) -> Iterator[Any]:
    """One local session for the module: 2 threads, a failed task tried twice in all."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        pyspark_sql.SparkSession.builder.master("local[2,2]")
        .appName("featserve tests")
        .config("spark.ui.enabled", "false")
        .config("spark.eventLog.enabled", "true")
        .config("spark.eventLog.dir", str(event_log))
        # Plain text, so that a search for the password cannot miss it in compressed blocks.
        .config("spark.eventLog.compress", "false")
        .config("spark.sql.shuffle.partitions", "3")
        .getOrCreate()
    )
    yield session
    session.stop()


def table_rows(seed: int) -> list[dict[str, Any]]:
    """Rows of 120 entities, several each, with nulls, equal times, expired and invalid rows."""
    draw = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(600):
        rows.append(
            {
                "entity_id": f"s{draw.randrange(120):03d}",
                "event_timestamp": NOW - draw.choice([10, 600, 600, 7200, 10 * 86400]),
                "tx_count_1h": draw.choice([None, draw.randrange(50)]),
                "tx_sum_1h": draw.choice([None, round(draw.uniform(0, 500), 2)]),
                "is_premium": draw.randrange(2),
            }
        )
    rows[5]["tx_count_1h"] = -3  # below the minimum
    rows[77]["entity_id"] = "has space"
    rows[123]["event_timestamp"] = NOW + 86_400  # dated ahead
    return rows


def cluster_state(cluster: LocalCluster) -> dict[bytes, Any]:
    """Every key of every primary: its contents and its expiry time."""
    state: dict[bytes, Any] = {}
    for primary in cluster.primaries():
        with redis.Redis.from_url(primary.url) as client:
            for key, value in redis_state(client).items():
                state[key] = (value, client.pexpiretime(key.decode()))
    return state


def fail_first_attempt(marker: Path) -> Callable[[ChunkTally], None]:
    """An ``on_chunk`` that fails the first attempt of partition 0 after its first batch."""

    def fail(_: ChunkTally) -> None:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None and context.partitionId() == 0 and context.attemptNumber() == 0:
            marker.write_text("failed once")
            raise RuntimeError("attempt 0 of partition 0 fails after its first batch, on purpose")

    return fail


def test_a_spark_run_with_a_failed_task_leaves_the_cluster_as_one_process_does(
    spark: Any, tmp_path: Path
) -> None:
    path = tmp_path / "features.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows(seed=11)), path)
    clock = lambda: float(NOW)  # noqa: E731  (one "now" for both runs)
    with LocalCluster() as cluster:
        settings = Settings(
            redis_url=cluster.url,
            redis_mode="cluster",
            redis_socket_timeout_ms=5000.0,
            redis_connect_timeout_ms=5000.0,
            materialize_keys_per_call=16,
        )
        store = open_online_store(settings, for_writes=True)
        try:
            alone = Materialization(
                open_table(path), FEATURES, store, chunk_rows=100, clock=clock
            ).run()
        finally:
            store.close()
        expected = cluster_state(cluster)
        cluster.flush()

        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "40")
        marker = tmp_path / "failed"
        run = materialize_dataframe(
            read_table(spark, str(path), "parquet"),
            FEATURES,
            settings=settings,
            clock=clock,
            on_chunk=fail_first_attempt(marker),
            rejects_path=str(tmp_path / "rejects"),
        )
        assert marker.exists(), "no task failed: the retry was not exercised"
        assert cluster_state(cluster) == expected
    report = run.report
    assert len(expected) > 100
    assert report.rows == 600 == alone.rows
    assert report.rows == (
        report.written + report.skipped_older + report.expired + report.rows_rejected
    )
    assert (report.expired, report.rejected_by_field) == (alone.expired, alone.rejected_by_field)
    assert report.rejected_by_field == {"tx_count_1h": 1, "entity_id": 1, "event_timestamp": 1}
    # Counted per batch: an entity written from two batches counts twice.
    assert report.entity_groups_written >= len(expected)


def test_the_command_writes_rejects_with_reasons_and_redis_password_stays_out_of_spark(
    spark: Any,
    event_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "features.parquet"
    rows = table_rows(seed=12)[:200]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with LocalRedis() as server:
        with redis.Redis.from_url(server.url) as client:
            client.config_set("requirepass", PASSWORD)
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        monkeypatch.setenv("REDIS_URL", url)
        capsys.readouterr()
        code = main(["materialize", str(path), "--engine", "spark", "--json"])
        summary = json.loads(capsys.readouterr().out)
        with redis.Redis.from_url(url) as client:
            keys = client.dbsize()
    assert code == 1  # rows were rejected
    assert (
        summary["rows"]
        == 200
        == sum(summary[k] for k in ("written", "skipped_older", "expired", "rejected"))
    )
    assert keys == summary["entity_groups_written"] > 50
    parts = sorted(Path(summary["rejects_file"]).glob("part-*.csv"))
    rejects = []
    for part in parts:
        with part.open(newline="") as handle:
            rejects += list(csv.DictReader(handle))
    assert {(r["row"], r["field"]) for r in rejects} == {
        ("6", "tx_count_1h"),
        ("78", "entity_id"),
        ("124", "event_timestamp"),
    }
    assert all(r["problem"] and json.loads(r["record"]) for r in rejects)
    recorded = "".join(p.read_text(errors="replace") for p in event_log.rglob("*") if p.is_file())
    assert "mapInArrow" in recorded or "MapInArrow" in recorded  # the log holds this job
    assert PASSWORD not in recorded
    assert PASSWORD not in repr(spark.sparkContext.getConf().getAll())


def test_the_command_exits_3_when_redis_is_unreachable(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "features.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows(seed=13)[:50]), path)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["materialize", str(path), "--engine", "spark"]) == 3
