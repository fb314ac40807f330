"""The fraud example's derived features: pure functions of the request and stored values.

``project.py`` declares them, so training and the service compute every
derived feature with this same code.  ``derive_one`` serves a single request
with plain Python; ``derive_batch`` computes the same values per column with
numpy.  Both use only integer
arithmetic on timestamps and the same float operations, so they agree
exactly, not just closely.

Timestamps are epoch seconds, read as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DERIVED_FEATURES", "READS", "derive_batch", "derive_one"]

DERIVED_FEATURES: tuple[str, ...] = (
    "seconds_since_last_login",
    "hour_of_day",
    "day_of_week",
    "is_weekend",
    "amount_minus_avg_90d",
    "amount_to_avg_90d",
)
"""Names of the derived features, in the order both functions return them."""

READS: tuple[str, ...] = ("amount", "timestamp", "last_login_ts", "avg_tx_90d")
"""The request inputs and stored features the derivations read."""

_SECONDS_PER_HOUR = 3600
_SECONDS_PER_DAY = 86400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0.
_RATIO_FLOOR = 1.0  # Below one currency unit of history, divide by 1 instead.


def derive_one(row: Mapping[str, Any]) -> dict[str, float]:
    """Derived features of one request, by name, in ``DERIVED_FEATURES`` order."""
    amount = float(row["amount"])
    timestamp = int(row["timestamp"])
    last_login_ts = int(row["last_login_ts"])
    avg_tx_90d = float(row["avg_tx_90d"])
    day_of_week = (timestamp // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7
    return {
        "seconds_since_last_login": float(timestamp - last_login_ts),
        "hour_of_day": float(timestamp // _SECONDS_PER_HOUR % 24),
        "day_of_week": float(day_of_week),
        "is_weekend": float(day_of_week >= 5),
        "amount_minus_avg_90d": amount - avg_tx_90d,
        "amount_to_avg_90d": amount / max(avg_tx_90d, _RATIO_FLOOR),
    }


def derive_batch(columns: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[np.float64]]:
    """Derived features of many requests: one float64 column per name, same order as above."""
    amount_col = np.asarray(columns["amount"], dtype=np.float64)
    timestamp_col = np.asarray(columns["timestamp"], dtype=np.int64)
    last_login_ts = np.asarray(columns["last_login_ts"], dtype=np.int64)
    avg_tx_90d = np.asarray(columns["avg_tx_90d"], dtype=np.float64)
    day_of_week = (timestamp_col // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7
    return {
        "seconds_since_last_login": (timestamp_col - last_login_ts).astype(np.float64),
        "hour_of_day": (timestamp_col // _SECONDS_PER_HOUR % 24).astype(np.float64),
        "day_of_week": day_of_week.astype(np.float64),
        "is_weekend": (day_of_week >= 5).astype(np.float64),
        "amount_minus_avg_90d": amount_col - avg_tx_90d,
        "amount_to_avg_90d": amount_col / np.maximum(avg_tx_90d, _RATIO_FLOOR),
    }
