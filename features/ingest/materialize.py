"""Materialization: an offline table into the online store, validated, ordered, chunked.

Each chunk of rows is checked against the registry (``features.ingest.updates``),
reduced to the newest row per entity (for a sorted-set group: every row's
member, each scored by its own event time), and written in pipelined
round trips whose server-side scripts skip anything older than what Redis
holds.  So the result does not depend on row order, a re-run changes
nothing, and a run killed midway and run again ends complete.

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
from typing import Any

from features.errors import InvalidUpdate
from features.ingest.tables import OfflineTable, TableError
from features.ingest.updates import parse_update
from features.registry import Feature, FeatureGroup, Structure
from features.stores.base import FeatureUpdate, OnlineStore

__all__ = ["MaterializeReport", "Rejected", "materialize", "table_columns"]


@dataclass(frozen=True)
class Rejected:
    """A row that was not written, and why."""

    row: int
    """1-based position among the table's data rows."""
    field: str
    problem: str
    record: Mapping[str, Any]


@dataclass
class MaterializeReport:
    """What a run read, wrote and refused."""

    rows_read: int = 0
    rejected_by_field: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    """Entity groups written."""
    stale: int = 0
    """Entity groups skipped because Redis held a newer event."""
    elapsed_s: float = 0.0

    @property
    def rows_rejected(self) -> int:
        """Rows refused, all reasons together."""
        return sum(self.rejected_by_field.values())

    @property
    def entities_per_second(self) -> float:
        """Entity groups applied per second of the run."""
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


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


def materialize(
    table: OfflineTable,
    group: FeatureGroup,
    store: OnlineStore,
    *,
    entity_column: str = "entity_id",
    timestamp_column: str = "event_timestamp",
    chunk_rows: int = 10_000,
    on_reject: Callable[[Rejected], None] = lambda _: None,
    on_progress: Callable[[int], None] = lambda _: None,
) -> MaterializeReport:
    """Write ``table`` into ``store`` as ``group``; see the module docstring."""
    columns = table_columns(table, group, entity_column, timestamp_column)
    features = columns[2:]
    from_csv = table.kind == "csv"
    report = MaterializeReport()
    started = time.perf_counter()
    for batch in table.batches(columns, chunk_rows):
        newest: dict[str, FeatureUpdate] = {}
        for offset, record in enumerate(batch.to_pylist()):
            try:
                update = parse_update(
                    group,
                    record[entity_column],
                    _event_seconds(record[timestamp_column], from_csv),
                    {name: _cell(group.by_name[name], record[name], from_csv) for name in features},
                )
            except InvalidUpdate as exc:
                report.rejected_by_field[exc.field] += 1
                on_reject(Rejected(report.rows_read + offset + 1, exc.field, exc.problem, record))
                continue
            newest[update.entity_id] = _combine(newest.get(update.entity_id), update)
        applied = store.write(list(newest.values()))
        report.applied += sum(applied)
        report.stale += len(applied) - sum(applied)
        report.rows_read += batch.num_rows
        on_progress(batch.num_rows)
    report.elapsed_s = time.perf_counter() - started
    return report


def _combine(held: FeatureUpdate | None, update: FeatureUpdate) -> FeatureUpdate:
    """The newer of two rows of one entity; for sorted sets, both rows' members."""
    if held is None:
        return update
    if update.group.structure is Structure.SORTED_SET:
        members = dict(held.values)
        for member, score in update.values.items():
            members[member] = max(score, members.get(member, score))
        event = max(held.event_ms, update.event_ms)
        return FeatureUpdate(update.entity_id, update.group, event, members)
    return update if update.event_ms >= held.event_ms else held


def _event_seconds(value: Any, from_csv: bool) -> Any:
    """Epoch seconds from a number, a datetime (naive means UTC) or, in CSV, text."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
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


def _cell(feature: Feature, value: Any, from_csv: bool) -> Any:
    """A table cell as the Python value ``parse_update`` checks."""
    if value is None:
        return None
    if from_csv:
        return _text_cell(feature, value)
    if feature.type_name == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # Parquet writers often store int columns with nulls as floats.
    return value


def _text_cell(feature: Feature, text: str) -> Any:
    try:
        if feature.type_name == "float32_vector":
            return json.loads(text)
        if feature.type_name in ("int", "float"):
            return feature.dtype.decode(text.encode(), feature.dim)
    except ValueError as exc:
        raise InvalidUpdate(
            feature.name, f"{text!r} is not a valid {feature.type_name}: {exc}"
        ) from None
    return text
