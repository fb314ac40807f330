"""Reading offline tables (Parquet or CSV) in chunks, with pyarrow, for materialization.

Only the columns asked for are read, chunk by chunk, so a table larger than
memory streams through.  CSV columns are read as strings and converted per
value by the caller (a bad cell rejects its row instead of failing the
file); Parquet columns keep their types.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

__all__ = ["OfflineTable", "TableError", "open_table"]

TableKind = Literal["parquet", "csv"]


class TableError(Exception):
    """The table cannot be read as asked: missing file, unknown format, wrong columns."""


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

    def batches(self, columns: Sequence[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """The chosen columns, about ``chunk_rows`` rows at a time."""
        if self.kind == "parquet":
            yield from pq.ParquetFile(self.path).iter_batches(
                batch_size=chunk_rows, columns=list(columns)
            )
            return
        # A block of ~200 bytes a row gives batches near chunk_rows.
        reader = pa_csv.open_csv(
            self.path,
            read_options=pa_csv.ReadOptions(block_size=max(chunk_rows * 200, 1 << 16)),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(columns),
                column_types=dict.fromkeys(columns, pa.string()),
                # Only an empty cell is null: ids like "NA" or "null" stay ids.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from reader


def open_table(path: Path, kind: TableKind | None = None) -> OfflineTable:
    """Open ``path`` (its kind from the suffix unless given) and read its column names."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    kind = kind or _kind_of(path)
    if kind == "parquet":
        metadata = pq.ParquetFile(path).metadata
        names = tuple(metadata.schema.to_arrow_schema().names)
        return OfflineTable(path, kind, names, metadata.num_rows)
    with path.open(newline="") as handle:
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
