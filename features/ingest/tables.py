"""Reading offline tables (Parquet or CSV) in chunks, with pyarrow, for materialization.

Only the columns asked for are read, chunk by chunk, so a table larger than
memory streams through.  Every data row comes out numbered (1-based, the
header not counted), so each can be accounted for:

- CSV cells are read as text (as bytes in a column that holds text that is
  not UTF-8) and converted per value by the caller, so a bad cell (not
  UTF-8, not a number) rejects its row instead of failing the file.  A line
  with the wrong number of cells is handed over as a ``MalformedRow``
  (pyarrow's ``invalid_row_handler``), not raised.  Blank lines are rows
  too (of empty cells), so row ``n`` is line ``n + 1`` of the file unless a
  quoted value spans lines.
- Parquet columns keep their types, except timestamps, which come out as
  epoch seconds (naive ones read as UTC), so no date beyond Python's range
  can fail a chunk.

A file that cannot be read any further (truncated, not CSV at all) raises
``TableError`` from the chunk that could not be read.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

__all__ = [
    "MalformedRow",
    "OfflineTable",
    "TableChunk",
    "TableError",
    "epoch_seconds",
    "open_table",
]

TableKind = Literal["parquet", "csv"]

_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


class TableError(Exception):
    """The table cannot be read as asked: missing file, unknown format, wrong columns."""


@dataclass(frozen=True)
class MalformedRow:
    """A CSV line that is not a row of the table (it has the wrong number of cells)."""

    row: int
    problem: str
    text: str


@dataclass(frozen=True)
class TableChunk:
    """Rows of a table: the readable ones as an Arrow batch with their numbers, and the
    malformed ones."""

    batch: pa.RecordBatch
    row_numbers: Sequence[int] | npt.NDArray[np.int64]
    """The 1-based number of each row of ``batch``, ascending."""
    malformed: Sequence[MalformedRow] = ()

    @property
    def size(self) -> int:
        """Rows in the chunk, malformed ones included."""
        return int(self.batch.num_rows) + len(self.malformed)

    @property
    def rows(self) -> list[tuple[int, Mapping[str, Any]]]:
        """The readable rows as numbered records."""
        return list(zip(self.row_numbers, self.batch.to_pylist(), strict=True))


@dataclass(frozen=True)
class OfflineTable:
    """An offline table to read in chunks."""

    path: Path
    kind: TableKind
    columns: tuple[str, ...]
    """Every column the file has, in file order."""
    total_rows: int | None
    """Known up front for Parquet; ``None`` for CSV."""

    @property
    def size_bytes(self) -> int:
        """The file's size, for progress on CSV."""
        return self.path.stat().st_size

    def chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[TableChunk]:
        """The chosen columns, at most ``chunk_rows`` readable rows a chunk, each row numbered."""
        if self.kind == "parquet":
            return self._parquet_chunks(columns, chunk_rows)
        return self._csv_chunks(columns, chunk_rows)

    def _parquet_chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[TableChunk]:
        next_row = 1
        # Without pre_buffer=False the reader keeps every column chunk it has read until the
        # end: memory grows with the file (250 MB for a 10,000,000-row table of 12 columns).
        batches = pq.ParquetFile(self.path, pre_buffer=False).iter_batches(
            batch_size=chunk_rows, columns=list(columns)
        )
        for batch in _readable(batches, self.path):
            numbers = range(next_row, next_row + batch.num_rows)
            yield TableChunk(epoch_seconds(batch), numbers)
            next_row += batch.num_rows

    def _csv_chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[TableChunk]:
        pending: list[MalformedRow] = []

        def malformed(row: Any) -> str:
            pending.append(
                MalformedRow(
                    # pyarrow numbers lines when it reads on one thread, as here.
                    row=row.number - 1 if row.number is not None else 0,
                    problem=f"expected {row.expected_columns} cells, got {row.actual_columns}",
                    text=row.text,
                )
            )
            return "skip"

        # One thread, so the handler sees lines in file order, with their numbers.
        try:
            reader = self._open_csv(columns, chunk_rows, malformed)
        except (pa.ArrowException, OSError) as exc:
            raise TableError(f"{self.path}: cannot be read: {exc}") from exc
        next_row = 1
        for batch in _readable(reader, self.path):
            numbers, met, next_row = _number_rows(batch.num_rows, pending, next_row)
            pending = [row for row in pending if row not in met]
            yield from _split(_as_text(batch), numbers, met, chunk_rows)
        if pending:
            yield TableChunk(pa.RecordBatch.from_pylist([]), (), pending)

    def _open_csv(
        self, columns: Sequence[str], chunk_rows: int, malformed: Callable[[Any], str]
    ) -> pa_csv.CSVStreamingReader:
        return pa_csv.open_csv(
            self.path,
            # A block of ~200 bytes a row holds about chunk_rows rows; _split cuts what is more.
            read_options=pa_csv.ReadOptions(
                block_size=max(chunk_rows * 200, 1 << 16), use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(
                invalid_row_handler=malformed, ignore_empty_lines=False
            ),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(columns),
                column_types=dict.fromkeys(columns, pa.binary()),
                # Only an empty cell is null: ids like "NA" or "null" stay ids.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )


def _readable(batches: Iterator[pa.RecordBatch], path: Path) -> Iterator[pa.RecordBatch]:
    """``batches``, with a read failure raised as ``TableError``."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise TableError(f"{path}: cannot be read further: {exc}") from exc
        yield batch


def _number_rows(
    count: int, malformed: list[MalformedRow], first: int
) -> tuple[list[int], list[MalformedRow], int]:
    """Numbers for ``count`` records from ``first``, leaving out those of malformed rows.

    Returns the numbers, the malformed rows they passed, and the next number.
    """
    taken = {row.row for row in malformed}
    numbers: list[int] = []
    number = first
    for _ in range(count):
        while number in taken:
            number += 1
        numbers.append(number)
        number += 1
    met = [row for row in malformed if row.row < number or not count]
    return numbers, met, max([number, *(row.row + 1 for row in met)])


def _split(
    batch: pa.RecordBatch,
    numbers: Sequence[int],
    malformed: Sequence[MalformedRow],
    chunk_rows: int,
) -> Iterator[TableChunk]:
    """Chunks of at most ``chunk_rows`` readable rows (a CSV block holds any number of rows),
    each with the malformed rows numbered before its end."""
    left = sorted(malformed, key=lambda row: row.row)
    for start in range(0, len(numbers), chunk_rows):
        rows = numbers[start : start + chunk_rows]
        last = start + chunk_rows >= len(numbers)
        taken = [row for row in left if last or row.row < rows[-1]]
        left = left[len(taken) :]
        yield TableChunk(batch.slice(start, len(rows)), rows, taken)
    if left:
        yield TableChunk(batch.slice(0, 0), (), left)


def _as_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with each column that is all UTF-8 as strings; the others stay bytes, so one bad
    cell rejects its row only."""
    columns = []
    for column in batch.columns:
        try:
            columns.append(column.cast(pa.string()))
        except pa.ArrowInvalid:
            columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def epoch_seconds(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with every timestamp column as float epoch seconds (naive read as UTC)."""
    columns = []
    for column in batch.columns:
        if pa.types.is_timestamp(column.type):
            as_float = pc.cast(pc.cast(column, pa.int64()), pa.float64(), safe=False)
            column = pc.divide(as_float, _SECONDS_PER_UNIT[column.type.unit])
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def open_table(path: Path, kind: TableKind | None = None) -> OfflineTable:
    """Open ``path`` (its kind from the suffix unless given) and read its column names."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    kind = kind or _kind_of(path)
    if kind == "parquet":
        try:
            metadata = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as exc:
            raise TableError(f"{path}: not a readable Parquet file: {exc}") from exc
        names = tuple(metadata.schema.to_arrow_schema().names)
        return OfflineTable(path, kind, names, metadata.num_rows)
    with path.open(newline="", errors="replace") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise TableError(f"{path}: the CSV file has no header row")
    return OfflineTable(path, kind, tuple(header), None)


def _kind_of(path: Path) -> TableKind:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise TableError(f"{path}: cannot tell the format from {suffix!r}; pass --format")
