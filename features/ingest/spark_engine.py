"""Materialization on Apache Spark: the table's partitions written from the executors.

``materialize_dataframe`` is the call a Spark job makes (``featserve materialize
--engine spark`` makes it too, on a table it reads with Spark): it

1. fixes the run's rules on the driver (``WriteRules``, "now" included), so that
   every task, and every retry of a task, judges a row as the single process does;
2. repartitions the rows by entity id and sorts each partition by row number, so
   that all rows of an entity meet in one task, in table order (ties of event
   time go to the later row, as in one process);
3. runs ``features.ingest.writer.write_chunk`` on each Arrow batch of each
   partition (``mapInArrow``; a batch holds at most
   ``spark.sql.execution.arrow.maxRecordsPerBatch`` rows), into a store each task
   opens from the settings, and yields what became of the rows: one tally row
   per batch, one row per reject;
4. sums the tallies on the driver into a ``MaterializeReport`` (``rows == written
   + skipped_older + expired + rejected`` across the cluster) and writes the
   rejects as a CSV dataset (row, field, problem, record as JSON).

A task that fails is retried by Spark and writes its rows again: the stores'
scripts merge by event time, so a value written twice is the same value, and
nothing older replaces anything newer.  Rows are counted from the tallies of
the tasks that completed, so a retried task counts once.

**Credentials.**  The settings (``REDIS_URL`` with its password, tokens) reach
the executors in a broadcast variable, not in the task closure, the job's
configuration or an executor environment variable: a broadcast's value shows
in neither the Spark UI, the event log nor a plan.  Spark Connect has no
broadcast; there the executors must find ``REDIS_URL`` in their own
environment (``settings=None``).

pyspark is imported here and nowhere else in featserve (an import-linter
contract), so the service and the Bento never need it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from features.ingest.materialize import MaterializeReport, Stop, checked_columns, write_rules
from features.ingest.tables import TableChunk, epoch_seconds
from features.ingest.writer import ChunkTally, WriteRules, write_chunk
from features.registry import FeatureGroup
from features.settings import Settings
from features.stores.factory import open_online_store
from features.stores.write_rules import Clock, epoch_ms

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "ROW_NUMBER_COLUMN",
    "SparkRun",
    "failed_run",
    "materialize_dataframe",
    "read_table",
    "spark_session",
]

ROW_NUMBER_COLUMN = "_featserve_row"
"""The column of 1-based row numbers the engine adds (or takes, when the frame has it)."""

_RESULT_SCHEMA = pa.schema(
    [
        ("rows", pa.int64()),
        ("written", pa.int64()),
        ("skipped_older", pa.int64()),
        ("expired", pa.int64()),
        ("groups", pa.int64()),
        ("row", pa.int64()),
        ("field", pa.string()),
        ("problem", pa.string()),
        ("record", pa.string()),
    ]
)
"""What a task yields per batch: one tally row (``row`` null), then one row per reject."""

_CSV = {"header": "true", "escape": '"'}
"""The rejects' CSV: a header, quotes doubled inside quoted cells (RFC 4180, as ``csv`` reads
them; Spark's default escapes them with a backslash)."""

_RESULT_DDL = (
    "rows long, written long, skipped_older long, expired long, groups long, "
    "row long, field string, problem string, record string"
)


@dataclass(frozen=True)
class SparkRun:
    """What ``materialize_dataframe`` did: the report, and where the rejects went."""

    report: MaterializeReport
    rejects_path: str | None
    """The rejects' CSV dataset (a directory), or ``None`` when no row was rejected."""


def spark_session(master: str | None, batch_rows: int) -> SparkSession:
    """The session ``featserve materialize --engine spark`` runs in: the one ``spark-submit``
    set up, or a new one on ``master`` (``local[2]``, ``spark://host:7077``, ...); Arrow
    batches of at most ``batch_rows`` rows."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("featserve materialize")
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # The Python workers run here: the same interpreter, with featserve importable
        # (PySpark starts them with PYSPARK_PYTHON, else whatever python3 is on PATH).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    return builder.getOrCreate()


def read_table(spark: SparkSession, path: str, kind: str) -> DataFrame:
    """The table at ``path``: Parquet, with its 1-based row numbers in ``ROW_NUMBER_COLUMN``
    (file order, as ``featserve materialize`` numbers them), or CSV with a header, every
    cell as text (empty cells null), rows numbered by Spark's reading order."""
    from pyspark.sql import functions as F

    if kind == "csv":
        return spark.read.option("header", True).option("inferSchema", False).csv(path)
    frame = spark.read.parquet(path)
    return frame.withColumn(ROW_NUMBER_COLUMN, F.col("_metadata.row_index") + 1)


def materialize_dataframe(
    frame: DataFrame,
    group: FeatureGroup,
    *,
    settings: Settings | None,
    entity_column: str = "entity_id",
    timestamp_column: str = "event_timestamp",
    from_csv: bool = False,
    partitions: int | None = None,
    rejects_path: str | None = None,
    clock: Clock = time.time,
    on_chunk: Callable[[ChunkTally], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SparkRun:
    """Write ``frame`` into the online store as ``group``; see the module docstring.

    ``frame`` holds the entity id, event time and feature columns (``TableError`` for
    a missing or unknown one, before anything runs), and ``ROW_NUMBER_COLUMN`` when
    its rows have numbers (else they are numbered in the frame's order).  ``settings``
    go to the executors in a broadcast; ``None``: each executor reads its own
    environment.  ``partitions``: how many
    tasks write (default: one per core of the cluster).  ``on_chunk`` runs on the
    executor after each batch (metrics, or a test that fails a task); ``on_progress``
    on the driver, with rows accounted for so far, as tasks finish.  A job that fails
    (a store down for every retry) raises; nothing is counted then, and running it
    again is safe.
    """
    from pyspark.sql import functions as F

    spark = frame.sparkSession
    columns = [c for c in frame.columns if c != ROW_NUMBER_COLUMN]
    rules = write_rules(
        group,
        checked_columns(columns, "the data frame", group, entity_column, timestamp_column),
        now_ms=epoch_ms(clock),
        max_clock_skew_s=(settings or Settings()).max_clock_skew_s,
        from_csv=from_csv,
    )
    if ROW_NUMBER_COLUMN not in frame.columns:
        frame = frame.withColumn(ROW_NUMBER_COLUMN, F.monotonically_increasing_id() + 1)
    frame = frame.select(*rules.columns, ROW_NUMBER_COLUMN)
    count = partitions or _default_partitions(spark)
    frame = frame.repartition(count, entity_column).sortWithinPartitions(ROW_NUMBER_COLUMN)
    shipped = None if settings is None else spark.sparkContext.broadcast(settings.model_dump())
    progress = spark.sparkContext.accumulator(0) if on_progress is not None else None

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _write_partition(batches, rules, shipped, on_chunk, progress)

    started = time.perf_counter()
    results = frame.mapInArrow(write_partition, _RESULT_DDL).persist()
    try:
        report = _reported(results, progress, on_progress)
        report.elapsed_s = time.perf_counter() - started
        written_to = None
        if report.rows_rejected:
            written_to = rejects_path or "rejects"
            results.where(F.col("row").isNotNull()).select(
                "row", "field", "problem", "record"
            ).orderBy("row").write.mode("overwrite").options(**_CSV).csv(written_to)
        return SparkRun(report, written_to)
    finally:
        results.unpersist()


def _default_partitions(spark: SparkSession) -> int:
    """One task per core the cluster has (Spark Connect: ``spark.sql.shuffle.partitions``).

    Not the shuffle's 200: each task opens its own connections and writes its rows in
    batches, so many small tasks cost more than they share out."""
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect has no SparkContext
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 200)


def _reported(
    results: DataFrame, progress: Any, on_progress: Callable[[int], None] | None
) -> MaterializeReport:
    """The tallies summed over every batch (one Spark job), reporting progress meanwhile."""
    from pyspark.sql import functions as F

    job = _ProgressWatch(progress, on_progress)
    with job:
        counts = ("rows", "written", "skipped_older", "expired", "groups")
        totals = results.agg(*(F.sum(name).alias(name) for name in counts)).collect()[0]
        by_field = results.where(F.col("row").isNotNull()).groupBy("field").count().collect()
    report = MaterializeReport(
        rows=int(totals["rows"] or 0),
        written=int(totals["written"] or 0),
        skipped_older=int(totals["skipped_older"] or 0),
        expired=int(totals["expired"] or 0),
        entity_groups_written=int(totals["groups"] or 0),
    )
    for row in by_field:
        report.rejected_by_field[row["field"]] = int(row["count"])
    return report


class _ProgressWatch:
    """Reports the accumulator of rows accounted for every second, while a job runs."""

    def __init__(self, progress: Any, on_progress: Callable[[int], None] | None) -> None:
        self._progress = progress
        self._on_progress = on_progress
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="featserve-progress")

    def __enter__(self) -> _ProgressWatch:
        if self._on_progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        if self._on_progress is not None:
            self._thread.join()
            self._on_progress(int(self._progress.value))

    def _watch(self) -> None:
        assert self._on_progress is not None
        while not self._done.wait(1.0):
            self._on_progress(int(self._progress.value))


def _write_partition(
    batches: Iterator[pa.RecordBatch],
    rules: WriteRules,
    shipped: Any,
    on_chunk: Callable[[ChunkTally], None] | None,
    progress: Any,
) -> Iterator[pa.RecordBatch]:
    """On an executor: each batch through ``write_chunk``, its tally and rejects yielded."""
    settings = Settings() if shipped is None else Settings(**shipped.value)
    store = open_online_store(settings, for_writes=True)
    try:
        for batch in batches:
            numbers = np.asarray(batch.column(ROW_NUMBER_COLUMN).to_numpy(), dtype=np.int64)
            rows = epoch_seconds(batch.select(list(rules.columns)))
            tally = write_chunk(TableChunk(rows, numbers), rules, store)
            if on_chunk is not None:
                on_chunk(tally)
            if progress is not None:
                progress.add(tally.rows)
            yield _result_batch(tally)
    finally:
        store.close()


def _result_batch(tally: ChunkTally) -> pa.RecordBatch:
    rejects = tally.rejects
    counts = [tally.rows, tally.written, tally.skipped_older, tally.expired]
    zeros = [0] * len(rejects)
    return pa.RecordBatch.from_pydict(
        {
            "rows": [counts[0], *zeros],
            "written": [counts[1], *zeros],
            "skipped_older": [counts[2], *zeros],
            "expired": [counts[3], *zeros],
            "groups": [tally.entity_groups_written, *zeros],
            "row": [None, *(r.row for r in rejects)],
            "field": [None, *(r.field for r in rejects)],
            "problem": [None, *(r.problem for r in rejects)],
            "record": [None, *(_record_json(r.record) for r in rejects)],
        },
        schema=_RESULT_SCHEMA,
    )


def _record_json(record: Any) -> str:
    def plain(value: Any) -> Any:
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    return json.dumps({k: plain(v) for k, v in record.items()}, default=str)


def failed_run(error: str, retry_safe: bool) -> MaterializeReport:
    """The report of a Spark job that failed: nothing counted, re-running is safe."""
    report = MaterializeReport()
    report.stopped = Stop(1, "store" if retry_safe else "crash", error, retry_safe)
    return report
