"""Offline demo tables, one Parquet (or CSV) file per feature group, for ``featserve materialize``.

``featserve demo-data --project examples/fraud --users 10000 --out var/demo`` writes

- ``user_features.parquet``: ``entity_id``, ``event_timestamp`` and the ten
  ``user:features`` columns, one row per user (from ``generate_users``);
- ``user_recent_items.parquet``: ``entity_id``, ``event_timestamp``,
  ``recent_items`` (one item id), a few recent views per user;
- ``user_embedding.parquet``: ``entity_id``, ``event_timestamp``,
  ``embedding`` (a list of 16 float32), one row per user.

Files are written in row groups of ``ROWS_PER_BATCH`` users, so a million
users fit in modest memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .dataset import entity_id, generate_users
from .groups import USER_EMBEDDING

__all__ = ["DEMO_SEED", "TableFormat", "write_demo_tables"]

DEMO_SEED = 20251127
ROWS_PER_BATCH = 100_000
VIEWS_PER_USER = 12

TableFormat = Literal["parquet", "csv"]


def write_demo_tables(
    out_dir: Path, n_users: int, now: int, seed: int = DEMO_SEED, fmt: TableFormat = "parquet"
) -> dict[str, Path]:
    """Write the three demo tables for users ``u000000`` onwards; return their paths by group."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for group, batches in (
        ("features", _feature_batches(n_users, now, seed)),
        ("recent_items", _recent_item_batches(n_users, now, seed + 1)),
        ("embedding", _embedding_batches(n_users, now, seed + 2)),
    ):
        path = out_dir / f"user_{group}.{fmt}"
        _write(path, batches, fmt)
        paths[group] = path
    return paths


def _write(path: Path, batches: Iterator[pa.RecordBatch], fmt: TableFormat) -> None:
    first = next(batches)
    if fmt == "parquet":
        with pq.ParquetWriter(path, first.schema) as writer:
            writer.write_batch(first)
            for batch in batches:
                writer.write_batch(batch)
        return
    with pa_csv.CSVWriter(path, _csv_schema(first.schema)) as writer:
        for batch in (first, *batches):
            writer.write_batch(_csv_ready(batch))


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    fields = [pa.field(f.name, pa.string()) if pa.types.is_list(f.type) else f for f in schema]
    return pa.schema(fields)


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Lists become JSON arrays in CSV, the form ``featserve materialize`` reads back."""
    columns = [
        pa.array([json.dumps(v) for v in column.to_pylist()], pa.string())
        if pa.types.is_list(column.type)
        else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _ranges(n_users: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n_users, ROWS_PER_BATCH):
        yield start, min(start + ROWS_PER_BATCH, n_users)


def _ids(start: int, stop: int) -> pa.Array:
    return pa.array([entity_id(i) for i in range(start, stop)], pa.string())


def _feature_batches(n_users: int, now: int, seed: int) -> Iterator[pa.RecordBatch]:
    users = generate_users(n_users, seed, now)
    for start, stop in _ranges(n_users):
        columns = {
            "entity_id": _ids(start, stop),
            "event_timestamp": pa.array(np.full(stop - start, now), pa.int64()),
        }
        for name, column in users.columns.items():
            columns[name] = pa.array(column[start:stop])
        yield pa.RecordBatch.from_pydict(columns)


def _recent_item_batches(n_users: int, now: int, seed: int) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    for start, stop in _ranges(n_users):
        count = (stop - start) * VIEWS_PER_USER
        users = np.repeat(np.arange(start, stop), VIEWS_PER_USER)
        yield pa.RecordBatch.from_pydict(
            {
                "entity_id": pa.array([entity_id(int(i)) for i in users], pa.string()),
                "event_timestamp": pa.array(now - rng.integers(60, 4 * 3600, count), pa.int64()),
                "recent_items": pa.array(
                    [f"i{item:05d}" for item in rng.integers(0, 50_000, count)], pa.string()
                ),
            }
        )


def _embedding_batches(n_users: int, now: int, seed: int) -> Iterator[pa.RecordBatch]:
    dim = USER_EMBEDDING.features[0].dim or 0
    rng = np.random.default_rng(seed)
    for start, stop in _ranges(n_users):
        vectors = rng.standard_normal((stop - start, dim)).astype(np.float32)
        yield pa.RecordBatch.from_pydict(
            {
                "entity_id": _ids(start, stop),
                "event_timestamp": pa.array(np.full(stop - start, now), pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(vectors.ravel(), dim).cast(
                    pa.list_(pa.float32())
                ),
            }
        )
