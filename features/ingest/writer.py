"""The one writer: a chunk of table rows into a store, validated, merged, accounted for.

``write_chunk`` is all that materialization does to rows, whichever engine
moves them: the single process (``features.ingest.materialize``) calls it on
each chunk it reads, a Spark task (``features.ingest.spark_engine``) on each
Arrow batch of its partition.  What judges the rows is fixed once per run, in
``WriteRules``: the group, the columns, and "now" (for expiry and for event
times dated ahead), so that every chunk, every task and every retry of a task
judges a row alike.

Per chunk:

1. **Validate** against the registry (``features.ingest.updates``).  Columns
   of a Parquet table are checked column by column with pyarrow and numpy;
   any row those checks do not clear (a null or odd entity id, a value out of
   range, a float in an int column, ...) goes through ``parse_update`` one by
   one, which accepts it or rejects it naming the field, so the per-row rules
   stay the authority.  CSV rows, all text, always go one by one.
2. **Expire**: rows already past their group's TTL are counted, not written.
3. **Merge** per entity, value by value, by the stores' rule: per hash field
   the newest value (an equal time: the later row); for a sorted set or a
   string, ``write_rules.held_after_write`` row after row.
4. **Write** the merged groups: hashes as ``HashRows`` (many entities per
   Redis script call), the others as ``FeatureUpdate``s.
5. **Account** for every row once: written (a value of it landed), skipped
   as older (every value of it was superseded, in the chunk or in the store),
   expired, or rejected with its reason (``Rejected``).

Steps 1 to 3 need no store (``prepare_chunk``), 4 and 5 do (``write_prepared``):
the single process prepares the next chunk while it writes the last one.

The result depends neither on row order across chunks nor on chunking: the
store's scripts merge by event time, so re-writing a chunk (a retried task)
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import InvalidUpdate
from features.ingest.tables import TableChunk
from features.ingest.updates import MAX_EVENT_TIMESTAMP, parse_update
from features.keys import ENTITY_ID_MAX_LENGTH
from features.registry import Feature, FeatureGroup, Structure
from features.stores.base import FeatureUpdate, OnlineStore
from features.stores.hash_rows import HashRows, write_hash_rows
from features.stores.held import HeldGroup, as_update
from features.stores.write_rules import held_after_write, is_live

__all__ = [
    "MALFORMED_FIELD",
    "STORE_FIELD",
    "ChunkTally",
    "PreparedChunk",
    "Rejected",
    "WriteRules",
    "prepare_chunk",
    "write_chunk",
    "write_prepared",
]

STORE_FIELD = "store"
"""The ``Rejected.field`` of a row a store refused for its data."""

MALFORMED_FIELD = "row"
"""The ``Rejected.field`` of a CSV line that is not a row of the table."""

_PLAIN_ENTITY_ID = f"^[!-z|~]{{1,{ENTITY_ID_MAX_LENGTH}}}$"
"""Entity ids the column check clears (``keys.validate_entity_id``'s fast case)."""

_EXACT = 2.0**53
"""Numbers the column checks clear are below this magnitude, where float64 is exact."""


@dataclass(frozen=True)
class Rejected:
    """A row that was not written, and why."""

    row: int
    """1-based position among the table's data rows."""
    field: str
    problem: str
    record: Mapping[str, Any]


@dataclass(frozen=True)
class WriteRules:
    """What judges every row of one run; fixed once (on a Spark driver, then shipped)."""

    group: FeatureGroup
    entity_column: str
    timestamp_column: str
    feature_columns: tuple[str, ...]
    """The group's features the table holds, in table order."""
    now_ms: int
    """Now, for expiry and for event times dated ahead."""
    max_skew_ms: int
    from_csv: bool = False
    """Cells are text (CSV), converted value by value."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the writer reads."""
        return (self.entity_column, self.timestamp_column, *self.feature_columns)


@dataclass
class ChunkTally:
    """What became of a chunk's rows: ``rows == written + skipped_older + expired +
    len(rejects)``."""

    rows: int = 0
    written: int = 0
    skipped_older: int = 0
    expired: int = 0
    entity_groups_written: int = 0
    rejects: list[Rejected] = field(default_factory=list)


@dataclass
class PreparedChunk:
    """A chunk validated, expired and merged (``prepare_chunk``): what ``write_prepared``
    sends to a store."""

    chunk: TableChunk
    rejects: list[Rejected]
    """The rows rejected so far; the store's refusals are added when written."""
    hashes: _MergedHashes | None
    """A hash group's rows, merged; ``None`` for other structures (merged when written)."""


def write_chunk(chunk: TableChunk, rules: WriteRules, store: OnlineStore) -> ChunkTally:
    """Validate, expire, merge, write and account for ``chunk``; see the module docstring.

    Raises ``StoreError`` when the store fails; nothing of the chunk is accounted for then.
    """
    return write_prepared(prepare_chunk(chunk, rules), rules, store)


def prepare_chunk(chunk: TableChunk, rules: WriteRules) -> PreparedChunk:
    """Steps 1 to 3 of ``write_chunk`` for a hash group (CPU only, no store), so that one
    chunk can be prepared while the last one is written; other structures pass through."""
    rejects = [
        Rejected(bad.row, MALFORMED_FIELD, bad.problem, {"line": bad.text})
        for bad in chunk.malformed
    ]
    hashes = None
    if rules.group.structure is Structure.HASH:
        hashes = _merged_hashes(chunk, rules, rejects)
    return PreparedChunk(chunk, rejects, hashes)


def write_prepared(prepared: PreparedChunk, rules: WriteRules, store: OnlineStore) -> ChunkTally:
    """Steps 4 and 5 of ``write_chunk`` for a chunk ``prepare_chunk`` prepared by ``rules``."""
    chunk, rejects = prepared.chunk, list(prepared.rejects)
    if prepared.hashes is not None:
        written, expired, groups = _write_hashes(prepared.hashes, chunk, rules, store, rejects)
    else:
        written, expired, groups = _write_updates(chunk, rules, store, rejects)
    rejects.sort(key=lambda rejected: rejected.row)
    return ChunkTally(
        rows=chunk.size,
        written=written,
        skipped_older=chunk.size - written - expired - len(rejects),
        expired=expired,
        entity_groups_written=groups,
        rejects=rejects,
    )


@dataclass
class _HashColumns:
    """A chunk's rows as columns: validity, entity, event time, each value as Redis' text."""

    valid: npt.NDArray[np.bool_]
    entities: list[Any]
    when: npt.NDArray[np.int64]
    texts: list[list[Any]]
    """Per feature column; only cells where ``present`` is set are meaningful."""
    present: npt.NDArray[np.bool_]
    """rows x features: the row has a value for the feature."""


@dataclass(frozen=True)
class _MergedHashes:
    """A hash group's chunk after expiry and merge: what to write, and where it came from."""

    numbers: npt.NDArray[np.int64]
    """Each row's 1-based position among the table's data rows."""
    expired: int
    merged: HashRows | None
    """``None`` when no live row is left."""
    source: npt.NDArray[np.intp]
    """Per merged entity and field, the chunk row its value came from (-1 where none)."""


def _merged_hashes(chunk: TableChunk, rules: WriteRules, rejects: list[Rejected]) -> _MergedHashes:
    """Validate, expire and merge a hash group's rows."""
    batch = chunk.batch
    numbers = np.asarray(chunk.row_numbers, dtype=np.int64)
    columns = None if rules.from_csv else _checked_columns(batch, rules)
    if columns is None:
        columns = _unchecked_columns(batch.num_rows, len(rules.feature_columns))
    _parse_uncleared(batch, numbers, rules, columns, rejects)
    ttl_ms = rules.group.ttl // timedelta(milliseconds=1)
    live = columns.valid & (columns.when + ttl_ms > rules.now_ms)
    expired = int(np.count_nonzero(columns.valid & ~live))
    rows = np.flatnonzero(live)
    if not len(rows):
        return _MergedHashes(numbers, expired, None, np.empty((0, 0), dtype=np.intp))
    merged, source = _merged(rules, columns, rows, numbers)
    return _MergedHashes(numbers, expired, merged, source)


def _write_hashes(
    hashes: _MergedHashes,
    chunk: TableChunk,
    rules: WriteRules,
    store: OnlineStore,
    rejects: list[Rejected],
) -> tuple[int, int, int]:
    """Write a hash group's rows; returns rows written, rows expired, entity groups written."""
    if hashes.merged is None:
        return 0, hashes.expired, 0
    source, numbers = hashes.source, hashes.numbers
    outcome = write_hash_rows(store, hashes.merged)
    # The rows a landed value came from (a bitmap: a sort of every landed value costs more).
    written = np.zeros(len(numbers), dtype=np.bool_)
    written[source[outcome.landed]] = True
    if outcome.refused:
        problem_of = {
            int(row): problem
            for entity, problem in outcome.refused.items()
            for row in source[entity].tolist()
            if row >= 0
        }
        refused_rows = sorted(problem_of)
        picked = chunk.batch.select(list(rules.columns)).take(pa.array(refused_rows, pa.int64()))
        for row, record in zip(refused_rows, picked.to_pylist(), strict=True):
            rejects.append(Rejected(int(numbers[row]), STORE_FIELD, problem_of[row], record))
    groups = int(np.count_nonzero(outcome.landed.any(axis=1)))
    return int(np.count_nonzero(written)), hashes.expired, groups


def _merged(
    rules: WriteRules,
    columns: _HashColumns,
    rows: npt.NDArray[np.intp],
    numbers: npt.NDArray[np.int64],
) -> tuple[HashRows, npt.NDArray[np.intp]]:
    """The newest value per entity and field among ``rows`` (an equal time: the later row),
    and, per entity and field, the row of the chunk it came from (-1 where none)."""
    entities = np.empty(len(columns.entities), dtype=object)
    entities[:] = columns.entities
    encoded = pa.array(entities[rows], pa.string()).dictionary_encode()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    entity_ids = encoded.dictionary.to_pylist()
    when = columns.when[rows]
    present = columns.present[rows]
    order = np.lexsort((numbers[rows], when, codes))
    width = len(rules.feature_columns)
    chosen = np.full((len(entity_ids), width), -1, dtype=np.intp)
    for column in range(width):
        candidates = order[present[order, column]]
        owners = codes[candidates]
        last = np.ones(len(candidates), dtype=np.bool_)
        last[:-1] = owners[1:] != owners[:-1]
        chosen[owners[last], column] = candidates[last]
    has = chosen >= 0
    value_ms = np.where(has, when[np.maximum(chosen, 0)], -1)
    event_ms = value_ms.max(axis=1)
    value_ms = np.where(has, value_ms, event_ms[:, None])
    source = np.where(has, rows[np.maximum(chosen, 0)], -1)
    texts = np.empty(chosen.shape, dtype=object)
    cells = np.empty(len(columns.valid) + 1, dtype=object)
    cells[-1] = ""  # what row -1 (no value for the field) reads
    for column in range(width):
        cells[:-1] = columns.texts[column]
        texts[:, column] = cells[source[:, column]]
    merged = HashRows(
        rules.group, rules.feature_columns, entity_ids, texts, has, value_ms, event_ms
    )
    return merged, source


def _unchecked_columns(count: int, width: int) -> _HashColumns:
    return _HashColumns(
        valid=np.zeros(count, dtype=np.bool_),
        entities=[None] * count,
        when=np.zeros(count, dtype=np.int64),
        texts=[[None] * count for _ in range(width)],
        present=np.zeros((count, width), dtype=np.bool_),
    )


def _parse_uncleared(
    batch: pa.RecordBatch,
    numbers: npt.NDArray[np.int64],
    rules: WriteRules,
    columns: _HashColumns,
    rejects: list[Rejected],
) -> None:
    """Run the rows the column checks did not clear through ``parse_update``, one by one."""
    uncleared = np.flatnonzero(~columns.valid)
    if not len(uncleared):
        return
    records = batch.select(list(rules.columns)).take(pa.array(uncleared)).to_pylist()
    by_name = rules.group.by_name
    for row, record in zip(uncleared.tolist(), records, strict=True):
        try:
            update = _parse(record, rules)
        except InvalidUpdate as exc:
            rejects.append(Rejected(int(numbers[row]), exc.field, exc.problem, record))
            continue
        columns.valid[row] = True
        columns.entities[row] = update.entity_id
        columns.when[row] = update.event_ms
        for column, name in enumerate(rules.feature_columns):
            value = update.values.get(name)
            present = value is not None
            columns.present[row, column] = present
            if present:
                columns.texts[column][row] = _encoded(by_name[name], value)


def _encoded(feature: Feature, value: Any) -> str:
    encoded = feature.dtype.encode(value)
    if not isinstance(encoded, bytes):
        raise TypeError("a hash feature encodes to bytes")
    return encoded.decode()


def _checked_columns(batch: pa.RecordBatch, rules: WriteRules) -> _HashColumns | None:
    """The rows the column checks clear, with their values; ``None`` when a column's type
    leaves every row to ``parse_update``."""
    count = batch.num_rows
    if count == 0:
        return None
    entity_column = batch.column(rules.entity_column)
    if not (pa.types.is_string(entity_column.type) or pa.types.is_large_string(entity_column.type)):
        return None
    ok = _filled(pc.match_substring_regex(entity_column, _PLAIN_ENTITY_ID))
    when = _event_ms(batch.column(rules.timestamp_column))
    if when is None:
        return None
    stamps, in_range = when
    ok &= in_range & (stamps <= rules.now_ms + rules.max_skew_ms)
    width = len(rules.feature_columns)
    present = np.zeros((count, width), dtype=np.bool_)
    texts: list[list[Any]] = []
    for column, name in enumerate(rules.feature_columns):
        checked = _checked_values(rules.group.by_name[name], batch.column(name))
        if checked is None:
            return None
        has, clear, text = checked
        present[:, column] = has
        ok &= clear
        texts.append(text)
    ok &= present.any(axis=1)
    return _HashColumns(ok, entity_column.to_pylist(), stamps, texts, present)


def _filled(mask: pa.Array) -> npt.NDArray[np.bool_]:
    """A boolean Arrow array as numpy, null as false."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=np.bool_)


_NUMPY_DTYPES: dict[pa.DataType, type[np.generic]] = {
    pa.int64(): np.int64,
    pa.float64(): np.float64,
}
"""The numpy type of each Arrow type ``_as_numpy`` casts to (not ``to_pandas_dtype``, which
imports pandas on the pyarrow releases the floor allows)."""


def _as_numpy(column: pa.Array, dtype: pa.DataType) -> npt.NDArray[Any]:
    """``column`` cast to ``dtype`` (int64 or float64) as numpy, nulls as zero."""
    return np.asarray(
        pc.fill_null(pc.cast(column, dtype), 0).to_numpy(zero_copy_only=False),
        dtype=_NUMPY_DTYPES[dtype],
    )


def _event_ms(
    column: pa.Array,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None:
    """Epoch ms of epoch-second event times (``updates.event_ms``' arithmetic), and which are in
    range; ``None`` for a column type left to ``parse_update``."""
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    if pa.types.is_signed_integer(column.type):
        seconds = _as_numpy(column, pa.int64())
        in_range = valid & (seconds >= 0) & (seconds <= MAX_EVENT_TIMESTAMP)
        return np.where(in_range, seconds, 0) * 1000, in_range
    if pa.types.is_floating(column.type):
        seconds_f = _as_numpy(column, pa.float64())
        with np.errstate(invalid="ignore"):
            in_range = valid & (seconds_f >= 0) & (seconds_f <= MAX_EVENT_TIMESTAMP)
        # Python's round() is half to even, as numpy's.
        return np.round(np.where(in_range, seconds_f, 0.0) * 1000).astype(np.int64), in_range
    return None


def _checked_values(
    feature: Feature, column: pa.Array
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], list[Any]] | None:
    """Which rows have a value, which are cleared (no value, or a valid one), and each value as
    the text Redis keeps; ``None`` for a column type left to ``parse_update``."""
    has = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    if pa.types.is_signed_integer(column.type):
        numbers = _as_numpy(column, pa.int64()).astype(np.float64)
        clear = np.abs(numbers) < _EXACT
    elif pa.types.is_floating(column.type):
        numbers = _as_numpy(column, pa.float64())
        clear = np.isfinite(numbers) & (np.abs(numbers) < _EXACT)
        if feature.type_name == "int":
            clear &= numbers == np.trunc(numbers)
    else:
        return None
    if feature.minimum is not None:
        clear &= numbers >= float(feature.minimum)
    if feature.maximum is not None:
        clear &= numbers <= float(feature.maximum)
    clear = ~has | clear
    safe = np.where(clear, numbers, 0.0)
    if feature.type_name == "int":
        texts: list[Any] = pc.cast(pa.array(safe.astype(np.int64)), pa.string()).to_pylist()
    elif feature.type_name == "float":
        texts = _float_texts(safe)
    else:
        return None
    return has, clear, texts


_EXPONENT_BELOW = 1e-4
"""Python's ``repr`` writes a nonzero float of smaller magnitude with an exponent."""


def _float_texts(numbers: npt.NDArray[np.float64]) -> list[Any]:
    """``float.__repr__`` of each number (finite, below 2**53 in magnitude): the text
    ``dtype.encode`` keeps, at half the cost of calling it per value.  Arrow writes the same
    shortest round-trip digits, but a whole number without ``.0`` (added here) and exponents
    from other bounds: a number Arrow writes with one, or that ``repr`` writes with one, is
    left to ``repr``."""
    texts = pc.cast(pa.array(numbers), pa.string())
    positional = pc.invert(pc.match_substring(texts, "e"))
    whole = pc.and_(positional, pc.invert(pc.match_substring(texts, ".")))
    texts = pc.if_else(whole, pc.binary_join_element_wise(texts, ".0", ""), texts)
    written: list[Any] = texts.to_pylist()
    magnitude = np.abs(numbers)
    odd = ~_filled(positional) | ((magnitude < _EXPONENT_BELOW) & (magnitude > 0))
    for index in np.flatnonzero(odd).tolist():
        written[index] = float.__repr__(float(numbers[index]))
    return written


def _write_updates(
    chunk: TableChunk, rules: WriteRules, store: OnlineStore, rejects: list[Rejected]
) -> tuple[int, int, int]:
    """Write a sorted-set or string group's rows, merged update by update."""
    expired = 0
    merging: dict[str, tuple[HeldGroup | None, dict[str, int]]] = {}
    records: dict[int, Mapping[str, Any]] = {}
    if chunk.batch.num_rows:
        chosen_columns = chunk.batch.select(list(rules.columns)).to_pylist()
        records = dict(zip(chunk.row_numbers, chosen_columns, strict=True))
    for row, record in records.items():
        try:
            update = _parse(record, rules)
        except InvalidUpdate as exc:
            rejects.append(Rejected(row, exc.field, exc.problem, record))
            continue
        if not is_live(rules.group, update.event_ms, rules.now_ms):
            expired += 1
            continue
        held, row_of = merging.setdefault(update.entity_id, (None, {}))
        merged = held_after_write(held, update, rules.now_ms)
        if merged.after is not None:
            row_of.update(dict.fromkeys(merged.landed, row))
            merging[update.entity_id] = (merged.after, row_of)
    entities = [(e, held, row_of) for e, (held, row_of) in merging.items() if held is not None]
    outcomes = store.write([as_update(e, rules.group, held) for e, held, _ in entities])
    written: set[int] = set()
    groups = 0
    for (_, held, row_of), outcome in zip(entities, outcomes, strict=True):
        # A value pushed out of a sorted set by newer members in this chunk has no row.
        from_rows = {row for name, row in row_of.items() if name in held.values}
        if outcome.refused is not None:
            for row in sorted(from_rows):
                rejects.append(Rejected(row, STORE_FIELD, outcome.refused, records[row]))
            continue
        groups += outcome.applied
        written.update(row for name, row in row_of.items() if name in outcome.landed)
    return len(written), expired, groups


def _parse(record: Mapping[str, Any], rules: WriteRules) -> FeatureUpdate:
    """The row as a validated update; ``InvalidUpdate`` names the column and the problem."""
    values: dict[str, Any] = {}
    for name in rules.feature_columns:
        feature = rules.group.by_name[name]
        value = record[name]
        if value is None:
            pass
        elif rules.from_csv:
            value = _text_cell(feature, _text(name, value))
        elif feature.type_name == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # Parquet writers often store int columns with nulls as floats.
        values[name] = value
    return parse_update(
        rules.group,
        _text(rules.entity_column, record[rules.entity_column]),
        _event_seconds(_text(rules.timestamp_column, record[rules.timestamp_column]), rules),
        values,
        now_ms=rules.now_ms,
        max_skew_ms=rules.max_skew_ms,
    )


def _text(column: str, value: Any) -> Any:
    """A CSV cell that is not UTF-8 text (pyarrow hands it over as bytes) as text, or a reject;
    other values as they are."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidUpdate(column, f"{value[:40]!r} is not UTF-8 text") from None


def _event_seconds(value: Any, rules: WriteRules) -> Any:
    """Epoch seconds from a number, a datetime (naive means UTC) or, in CSV, text."""
    if isinstance(value, datetime):
        try:
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        except (OverflowError, ValueError):
            raise InvalidUpdate("event_timestamp", f"{value!r} is out of range") from None
    if rules.from_csv and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return _event_seconds(datetime.fromisoformat(value), rules)
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
