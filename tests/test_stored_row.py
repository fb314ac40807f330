"""StoredRow: a store's tuple of values in field order, read as a mapping of what was found."""

from __future__ import annotations

import pytest

from features.stores.base import StoredRow


def test_a_row_is_the_mapping_of_the_values_found() -> None:
    row = StoredRow(("a", "b", "c"), (1, None, 2.5))
    assert row == {"a": 1, "c": 2.5}
    assert list(row) == ["a", "c"]
    assert len(row) == 2
    assert row.get("b") is None
    assert "b" not in row
    with pytest.raises(KeyError):
        row["b"]
    with pytest.raises(KeyError):
        row["unknown"]
    assert row.in_order == (1, None, 2.5)
