"""Materialization: an offline table into the online store, validated, merged, accounted for.

Each chunk of rows is checked against the registry (``features.ingest.updates``,
event times no further ahead of now than the allowed clock skew), rows whose
values are already past their group's TTL are set aside as expired, and the
rest are merged per entity value by value, by the stores' own rule
(``write_rules.held_after_write``): for each hash field the newest value, for a
sorted set the newest ``top_n`` members.  The merged groups are written in
pipelined round trips whose server-side scripts merge the same way with
what the store holds, so the result depends neither on row order nor on
chunking, a re-run changes nothing, and a run killed midway and run again
ends complete.

Every row is accounted for, once: **written** (a value of it landed),
**skipped as older** (each of its values was superseded by a newer one, in
the table or in the store), **expired**, or **rejected** with the field and
the problem (invalid, dated ahead, a malformed CSV line, or refused by a
store for its data).  A chunk counts when it is done; when the run stops
(a store fails, the file cannot be read further) ``MaterializeReport.stopped``
says from which row on nothing was accounted for.

While a chunk is written, the next one is read, checked and merged
(``writer.prepare_chunk``) on a second thread: the store's round trips wait
with the GIL released, so one process keeps Redis busy instead of taking
turns with it.  Chunks are still written one after the other, in order.

A table has an entity id column, an event timestamp column (epoch seconds,
a Parquet timestamp, or ISO 8601 in CSV) and the group's features: any of
a hash group's feature columns, or the one column of a sorted-set (one item
id per row) or string group (a list of floats; a JSON array in CSV).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.ingest.tables import OfflineTable, TableChunk, TableError
from features.ingest.writer import (
    ChunkTally,
    PreparedChunk,
    Rejected,
    WriteRules,
    prepare_chunk,
    write_prepared,
)
from features.registry import FeatureGroup
from features.stores.base import OnlineStore
from features.stores.codecs import codec_of
from features.stores.write_rules import Clock, epoch_ms

__all__ = [
    "Materialization",
    "MaterializeReport",
    "Rejected",
    "Stop",
    "StopCause",
    "checked_columns",
    "materialize",
    "table_columns",
    "write_rules",
]

StopCause = Literal["store", "table", "crash"]
"""What stopped a run: a store failed, the table could not be read further, or anything else."""


@dataclass(frozen=True)
class Stop:
    """Where and why a run stopped before the end of the table."""

    before_row: int
    """The first row not accounted for; every row before it is."""
    cause: StopCause
    error: str
    retry_safe: bool
    """Whether the cause may pass (a store timed out or was unreachable): run again then."""


@dataclass
class MaterializeReport:
    """What a run read and what became of each row: ``rows == written + skipped_older +
    expired + rows_rejected``."""

    rows: int = 0
    """Rows accounted for (every row read, unless the run stopped)."""
    written: int = 0
    """Rows of which at least one value landed."""
    skipped_older: int = 0
    """Rows every value of which was superseded by a newer one (in the table or the store)."""
    expired: int = 0
    """Rows already past their group's TTL, so not written."""
    rejected_by_field: Counter[str] = field(default_factory=Counter)
    entity_groups_written: int = 0
    """Entity groups of which at least one value landed."""
    stopped: Stop | None = None
    elapsed_s: float = 0.0

    @property
    def rows_rejected(self) -> int:
        """Rows refused, all reasons together."""
        return sum(self.rejected_by_field.values())

    @property
    def entities_per_second(self) -> float:
        """Entity groups written per second of the run."""
        return self.entity_groups_written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, tally: ChunkTally) -> None:
        """Count a chunk's rows (``features.ingest.writer.write_chunk``'s answer)."""
        self.rows += tally.rows
        self.written += tally.written
        self.skipped_older += tally.skipped_older
        self.expired += tally.expired
        self.entity_groups_written += tally.entity_groups_written
        self.rejected_by_field.update(rejected.field for rejected in tally.rejects)

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON types (``featserve materialize --json``)."""
        stopped = self.stopped
        return {
            "rows": self.rows,
            "written": self.written,
            "skipped_older": self.skipped_older,
            "expired": self.expired,
            "rejected": self.rows_rejected,
            "rejected_by_field": dict(self.rejected_by_field.most_common()),
            "entity_groups_written": self.entity_groups_written,
            "stopped": None
            if stopped is None
            else {
                "before_row": stopped.before_row,
                "cause": stopped.cause,
                "error": stopped.error,
                "retry_safe": stopped.retry_safe,
            },
            "elapsed_s": round(self.elapsed_s, 3),
        }


def table_columns(
    table: OfflineTable, group: FeatureGroup, entity_column: str, timestamp_column: str
) -> tuple[str, ...]:
    """The columns to read for ``group``; ``TableError`` for missing or unknown columns."""
    return checked_columns(table.columns, str(table.path), group, entity_column, timestamp_column)


def checked_columns(
    columns: Sequence[str],
    source: str,
    group: FeatureGroup,
    entity_column: str,
    timestamp_column: str,
) -> tuple[str, ...]:
    """Of ``columns`` (a table's or a data frame's, named ``source`` in errors), the entity id,
    the event time and the features of ``group``; ``TableError`` for missing or unknown ones."""
    missing = [c for c in (entity_column, timestamp_column) if c not in columns]
    features = [c for c in columns if c in group.by_name]
    unknown = [c for c in columns if c not in {entity_column, timestamp_column, *features}]
    missing += [name for name in codec_of(group).required_columns(group) if name not in features]
    if missing:
        raise TableError(f"{source}: missing column(s) {missing}")
    if unknown:
        raise TableError(
            f"{source}: column(s) {unknown} are not features of "
            f"{group.entity.name}:{group.name} ({', '.join(group.feature_names)})"
        )
    if not features:
        raise TableError(f"{source}: no feature columns of {group.entity.name}:{group.name}")
    return (entity_column, timestamp_column, *features)


class Materialization:
    """One run of ``materialize``; ``report`` holds what was done so far, even if ``run`` raised."""

    def __init__(
        self,
        table: OfflineTable,
        group: FeatureGroup,
        store: OnlineStore,
        *,
        entity_column: str = "entity_id",
        timestamp_column: str = "event_timestamp",
        chunk_rows: int = 10_000,
        max_clock_skew_s: float = 300.0,
        clock: Clock = time.time,
        on_reject: Callable[[Rejected], None] = lambda _: None,
        on_progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._columns = table_columns(table, group, entity_column, timestamp_column)
        self._table = table
        self._store = store
        self._chunk_rows = chunk_rows
        self._rules = write_rules(
            group,
            self._columns,
            now_ms=epoch_ms(clock),
            max_clock_skew_s=max_clock_skew_s,
            from_csv=table.kind == "csv",
        )
        self._on_reject = on_reject
        self._on_progress = on_progress
        self.report = MaterializeReport()

    def run(self) -> MaterializeReport:
        """Write the table; a store failure or an unreadable rest of the file stops the run."""
        started = time.perf_counter()
        chunks = self._table.chunks(self._columns, self._chunk_rows)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="materialize-prepare") as preparing:
                upcoming = preparing.submit(_prepared, chunks, self._rules)
                while (prepared := upcoming.result()) is not None:
                    upcoming = preparing.submit(_prepared, chunks, self._rules)
                    tally = write_prepared(prepared, self._rules, self._store)
                    for rejected in tally.rejects:
                        self._on_reject(rejected)
                    self.report.add(tally)
                    self._on_progress(prepared.chunk.size)
        except StoreError as exc:
            self._stop("store", str(exc), isinstance(exc, StoreUnavailable | StoreTimeout))
        except TableError as exc:
            self._stop("table", str(exc), False)
        except BaseException as exc:
            self._stop("crash", f"{type(exc).__name__}: {exc}", False)
            raise
        finally:
            self.report.elapsed_s = time.perf_counter() - started
        return self.report

    def _stop(self, cause: StopCause, error: str, retry_safe: bool) -> None:
        self.report.stopped = Stop(self.report.rows + 1, cause, error, retry_safe)


def _prepared(chunks: Iterator[TableChunk], rules: WriteRules) -> PreparedChunk | None:
    """The next chunk prepared, or ``None`` after the last."""
    chunk = next(chunks, None)
    return None if chunk is None else prepare_chunk(chunk, rules)


def write_rules(
    group: FeatureGroup,
    columns: tuple[str, ...],
    *,
    now_ms: int,
    max_clock_skew_s: float,
    from_csv: bool,
) -> WriteRules:
    """The rules of one run over ``columns`` (as ``table_columns`` gives them), judged at
    ``now_ms``."""
    entity_column, timestamp_column, *features = columns
    return WriteRules(
        group=group,
        entity_column=entity_column,
        timestamp_column=timestamp_column,
        feature_columns=tuple(features),
        now_ms=now_ms,
        max_skew_ms=round(max_clock_skew_s * 1000),
        from_csv=from_csv,
    )


def materialize(
    table: OfflineTable,
    group: FeatureGroup,
    store: OnlineStore,
    **options: Any,
) -> MaterializeReport:
    """Write ``table`` into ``store`` as ``group``; see the module docstring and ``Materialization``
    for the options."""
    return Materialization(table, group, store, **options).run()
