"""Decode many ``HMGET`` replies of one hash group at once, column by column, with pyarrow.

Each reply holds the requested fields and then the group's ``_event_ms``,
which is decoded as one more int column.

Decoding value by value costs a few Python calls per field.  Here every value
of the batch is parsed by one pyarrow cast (C++), checked with numpy, and
handed back as Python numbers.  It wins by less inside a running resolver
than in a hot loop, where all Python code runs faster (docs/benchmarks.md,
"What was changed").

The per-value decoder (``features.dtypes``) stays the authority: whenever the
batch holds anything but well-formed, finite numbers within their declared
ranges (a malformed or non-finite value, an int field with a fraction or
beyond 2**53, where float64 stops being exact, a value outside its feature's
minimum or maximum), ``decode_hash_columns`` returns ``None`` and the caller
decodes value by value, failing the entity-group that holds the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.registry import FeatureGroup
from features.stores.base import StoredRow

__all__ = ["MIN_REPLIES", "decode_hash_columns"]

MIN_REPLIES = 16
"""Fewer replies than this are decoded value by value: pyarrow's fixed cost per batch
is more than per-value decoding spends on a few replies (docs/benchmarks.md)."""

_EXACT_INT_LIMIT = 2.0**53
"""From this magnitude on, a float64 no longer holds every integer exactly: 2**53 + 1
parses to 2**53, so an int column reaching it is decoded value by value."""


def decode_hash_columns(
    group: FeatureGroup, fields: tuple[str, ...], replies: Sequence[Sequence[bytes]]
) -> list[StoredRow] | None:
    """Each reply's values and event time, or ``None`` if any needs the per-value decoder.

    ``replies`` are complete ``HMGET`` replies (nothing absent) of ``fields`` followed by
    ``_event_ms``, in order.
    """
    if not replies:
        return []
    width = len(fields) + 1
    flat = [raw for reply in replies for raw in reply]
    try:
        parsed = pc.cast(pa.array(flat, pa.binary()), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    matrix = parsed.to_numpy(zero_copy_only=False).reshape(len(replies), width)
    if not np.isfinite(matrix).all():
        return None
    # The event times (the last column) are integers, as every int column must be.
    int_indexes = [
        *(i for i, name in enumerate(fields) if group.by_name[name].type_name == "int"),
        len(fields),
    ]
    ints = matrix[:, int_indexes]
    if np.abs(ints).max() >= _EXACT_INT_LIMIT or (ints != np.trunc(ints)).any():
        return None
    if not _within_ranges(group, fields, matrix):
        return None
    columns: list[list[Any]] = matrix.T.tolist()
    for index, column in zip(int_indexes, ints.astype(np.int64).T.tolist(), strict=True):
        columns[index] = column
    events = columns.pop()
    return [
        StoredRow(fields, row, event_ms)
        for row, event_ms in zip(zip(*columns, strict=True), events, strict=True)
    ]


def _within_ranges(
    group: FeatureGroup, fields: tuple[str, ...], matrix: np.ndarray[Any, np.dtype[np.float64]]
) -> bool:
    """Whether every column lies within its feature's declared minimum and maximum."""
    for index, name in enumerate(fields):
        feature = group.by_name[name]
        column = matrix[:, index]
        if feature.minimum is not None and (column < feature.minimum).any():
            return False
        if feature.maximum is not None and (column > feature.maximum).any():
            return False
    return True
