"""Materialization: an offline table into the online store, validated, merged, accounted for.

Each chunk of rows is checked against the registry (``features.ingest.updates``,
event times no further ahead of now than the allowed clock skew), rows whose
values are already past their group's TTL are set aside as expired, and the
rest are merged per entity value by value, by the stores' own rule
(``backing.held_after_write``): for each hash field the newest value, for a
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

A table has an entity id column, an event timestamp column (epoch seconds,
a Parquet timestamp, or ISO 8601 in CSV) and the group's features: any of
a hash group's feature columns, or the one column of a sorted-set (one item
id per row) or string group (a list of floats; a JSON array in CSV).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from features.errors import InvalidUpdate, StoreError, StoreTimeout, StoreUnavailable
from features.ingest.tables import OfflineTable, TableChunk, TableError
from features.ingest.updates import parse_update
from features.registry import Feature, FeatureGroup, Structure
from features.stores.backing import Clock, HeldGroup, as_update, epoch_ms, held_after_write, is_live
from features.stores.base import FeatureUpdate, OnlineStore

__all__ = [
    "Materialization",
    "MaterializeReport",
    "Rejected",
    "Stop",
    "StopCause",
    "materialize",
    "table_columns",
]

STORE_FIELD = "store"
"""The ``Rejected.field`` of a row a store refused for its data."""

MALFORMED_FIELD = "row"
"""The ``Rejected.field`` of a CSV line that is not a row of the table."""


@dataclass(frozen=True)
class Rejected:
    """A row that was not written, and why."""

    row: int
    """1-based position among the table's data rows."""
    field: str
    problem: str
    record: Mapping[str, Any]


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
    missing = [c for c in (entity_column, timestamp_column) if c not in table.columns]
    features = [c for c in table.columns if c in group.by_name]
    unknown = [c for c in table.columns if c not in {entity_column, timestamp_column, *features}]
    if group.structure is not Structure.HASH and group.features[0].name not in features:
        missing.append(group.features[0].name)
    if missing:
        raise TableError(f"{table.path}: missing column(s) {missing}")
    if unknown:
        raise TableError(
            f"{table.path}: column(s) {unknown} are not features of "
            f"{group.entity.name}:{group.name} ({', '.join(group.feature_names)})"
        )
    if not features:
        raise TableError(f"{table.path}: no feature columns of {group.entity.name}:{group.name}")
    return (entity_column, timestamp_column, *features)


@dataclass
class _Merging:
    """One entity's rows of a chunk, merged: what they hold, and which row each value is from."""

    held: HeldGroup | None = None
    row_of: dict[str, int] = field(default_factory=dict)


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
        self._features = [(name, group.by_name[name]) for name in self._columns[2:]]
        self._table = table
        self._group = group
        self._store = store
        self._chunk_rows = chunk_rows
        self._max_skew_ms = round(max_clock_skew_s * 1000)
        self._clock = clock
        self._on_reject = on_reject
        self._on_progress = on_progress
        self.report = MaterializeReport()

    def run(self) -> MaterializeReport:
        """Write the table; a store failure or an unreadable rest of the file stops the run."""
        started = time.perf_counter()
        try:
            for chunk in self._table.chunks(self._columns, self._chunk_rows):
                self._load(chunk)
                self._on_progress(chunk.size)
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

    def _load(self, chunk: TableChunk) -> None:
        """Account for every row of ``chunk``; nothing is counted unless all of it is."""
        group = self._group
        now_ms = epoch_ms(self._clock)
        rejects = [
            Rejected(bad.row, MALFORMED_FIELD, bad.problem, {"line": bad.text})
            for bad in chunk.malformed
        ]
        expired = 0
        merging: dict[str, _Merging] = {}
        records = dict(chunk.rows)
        for row, record in chunk.rows:
            try:
                update = self._parse(record, now_ms)
            except InvalidUpdate as exc:
                rejects.append(Rejected(row, exc.field, exc.problem, record))
                continue
            if not is_live(group, update.event_ms, now_ms):
                expired += 1
                continue
            entity = merging.setdefault(update.entity_id, _Merging())
            merged_row = held_after_write(entity.held, update, now_ms)
            if merged_row.after is not None:
                entity.held = merged_row.after
                entity.row_of.update(dict.fromkeys(merged_row.landed, row))
        merged = [(e, m.held, m.row_of) for e, m in merging.items() if m.held is not None]
        outcomes = self._store.write([as_update(e, group, held) for e, held, _ in merged])
        written: set[int] = set()
        groups_written = 0
        for (_, held, row_of), outcome in zip(merged, outcomes, strict=True):
            # A value pushed out of a sorted set by newer members in this chunk has no row.
            from_rows = {row for name, row in row_of.items() if name in held.values}
            if outcome.refused is not None:
                for row in sorted(from_rows):
                    rejects.append(Rejected(row, STORE_FIELD, outcome.refused, records[row]))
                continue
            groups_written += outcome.applied
            written.update(row for name, row in row_of.items() if name in outcome.landed)
        self._account(chunk.size, len(written), expired, rejects, groups_written)

    def _account(
        self, rows: int, written: int, expired: int, rejects: list[Rejected], groups: int
    ) -> None:
        report = self.report
        report.entity_groups_written += groups
        for rejected in sorted(rejects, key=lambda r: r.row):
            report.rejected_by_field[rejected.field] += 1
            self._on_reject(rejected)
        report.rows += rows
        report.written += written
        report.expired += expired
        report.skipped_older += rows - written - expired - len(rejects)

    def _parse(self, record: Mapping[str, Any], now_ms: int) -> FeatureUpdate:
        """The row as a validated update; ``InvalidUpdate`` names the column and the problem."""
        entity_column, timestamp_column, *_ = self._columns
        from_csv = self._table.kind == "csv"
        values: dict[str, Any] = {}
        for name, feature in self._features:
            value = record[name]
            if value is None:
                pass
            elif from_csv:
                value = _text_cell(feature, _text(name, value))
            elif feature.type_name == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)  # Parquet writers often store int columns with nulls as floats.
            values[name] = value
        return parse_update(
            self._group,
            _text(entity_column, record[entity_column]),
            _event_seconds(_text(timestamp_column, record[timestamp_column]), from_csv),
            values,
            now_ms=now_ms,
            max_skew_ms=self._max_skew_ms,
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


def _text(column: str, value: Any) -> Any:
    """A CSV cell that is not UTF-8 text (pyarrow hands it over as bytes) as text, or a reject;
    other values as they are."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidUpdate(column, f"{value[:40]!r} is not UTF-8 text") from None


def _event_seconds(value: Any, from_csv: bool) -> Any:
    """Epoch seconds from a number, a datetime (naive means UTC) or, in CSV, text."""
    if isinstance(value, datetime):
        try:
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        except (OverflowError, ValueError):
            raise InvalidUpdate("event_timestamp", f"{value!r} is out of range") from None
    if from_csv and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return _event_seconds(datetime.fromisoformat(value), from_csv)
        except ValueError:
            raise InvalidUpdate(
                "event_timestamp", f"{value!r} is neither epoch seconds nor ISO 8601"
            ) from None
    return value


def _text_cell(feature: Feature, text: str) -> Any:
    try:
        if feature.type_name == "float32_vector":
            return json.loads(text)
        if feature.type_name in ("int", "float"):
            return feature.dtype.decode(text.encode(), feature.dim)
    except (ValueError, OverflowError) as exc:
        raise InvalidUpdate(
            feature.name, f"{text!r} is not a valid {feature.type_name}: {exc}"
        ) from None
    return text
