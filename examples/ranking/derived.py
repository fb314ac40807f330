"""The ranking example's derived features, two of them crossing the user and the item.

``derive_one`` serves one (user, item) row with plain Python, ``derive_batch`` the
same values per column with numpy; the service scores the candidates of a request
with ``derive_batch`` and training calls it too.  Both use the same operations, so
they agree exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DERIVED_FEATURES", "READS", "derive_batch", "derive_one"]

DERIVED_FEATURES: tuple[str, ...] = ("user_ctr", "category_match", "price_ratio", "hour_of_day")
"""Names of the derived features, in the order both functions return them."""

READS: tuple[str, ...] = (
    "clicks_30d",
    "impressions_30d",
    "favourite_category",
    "avg_price_clicked",
    "item_category",
    "item_price",
    "timestamp",
)
"""The stored features and request inputs the derivations read."""

PRIOR_IMPRESSIONS = 10.0
"""Added to a user's impressions so that a new user's click rate starts near 0, not 0/0."""
PRICE_FLOOR = 1.0
"""A user who clicked nothing priced compares prices with 1 instead of 0."""
_SECONDS_PER_HOUR = 3600


def derive_one(row: Mapping[str, Any]) -> dict[str, float]:
    """Derived features of one (user, item) row, by name."""
    favourite = int(row["favourite_category"])
    return {
        "user_ctr": float(row["clicks_30d"]) / (float(row["impressions_30d"]) + PRIOR_IMPRESSIONS),
        "category_match": float(favourite > 0 and favourite == int(row["item_category"])),
        "price_ratio": float(row["item_price"]) / max(float(row["avg_price_clicked"]), PRICE_FLOOR),
        "hour_of_day": float(int(row["timestamp"]) // _SECONDS_PER_HOUR % 24),
    }


def derive_batch(columns: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[np.float64]]:
    """Derived features of many rows: one float64 column per name."""
    favourite = np.asarray(columns["favourite_category"], dtype=np.int64)
    category = np.asarray(columns["item_category"], dtype=np.int64)
    clicks = np.asarray(columns["clicks_30d"], dtype=np.float64)
    impressions = np.asarray(columns["impressions_30d"], dtype=np.float64)
    price = np.asarray(columns["item_price"], dtype=np.float64)
    usual_price = np.asarray(columns["avg_price_clicked"], dtype=np.float64)
    timestamp = np.asarray(columns["timestamp"], dtype=np.int64)
    return {
        "user_ctr": clicks / (impressions + PRIOR_IMPRESSIONS),
        "category_match": ((favourite > 0) & (favourite == category)).astype(np.float64),
        "price_ratio": price / np.maximum(usual_price, PRICE_FLOOR),
        "hour_of_day": (timestamp // _SECONDS_PER_HOUR % 24).astype(np.float64),
    }
