"""The example's derived features: right against the calendar; row and column forms agree."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from service.harness.example import example_module

DERIVED_FEATURES = example_module("derived").DERIVED_FEATURES


def derive_one(amount, timestamp, stored):
    """The row form, given the request's amount and time and the stored values."""
    return example_module("derived").derive_one(
        {"amount": amount, "timestamp": timestamp, **stored}
    )


def derive_batch(amount, timestamp, stored):
    """The column form, given the same as columns."""
    columns = {"amount": amount, "timestamp": timestamp, **stored}
    return example_module("derived").derive_batch(columns)


# 2025-11-29 is a Saturday; 14:30 UTC.
SATURDAY_AFTERNOON = int(datetime(2025, 11, 29, 14, 30, tzinfo=UTC).timestamp())


def test_calendar_features_read_the_timestamp_as_utc() -> None:
    derived = derive_one(10.0, SATURDAY_AFTERNOON, {"last_login_ts": 0, "avg_tx_90d": 0.0})
    assert derived["hour_of_day"] == 14.0
    assert derived["day_of_week"] == 5.0
    assert derived["is_weekend"] == 1.0


@pytest.mark.parametrize("day", range(1, 15))
def test_day_of_week_matches_the_calendar(day: int) -> None:
    moment = datetime(2026, 3, day, 23, 59, 59, tzinfo=UTC)
    derived = derive_one(1.0, int(moment.timestamp()), {"last_login_ts": 0, "avg_tx_90d": 0.0})
    assert derived["day_of_week"] == moment.weekday()
    assert derived["is_weekend"] == float(moment.weekday() >= 5)
    assert derived["hour_of_day"] == 23.0


def test_amount_and_login_features() -> None:
    stored = {"last_login_ts": SATURDAY_AFTERNOON - 7200, "avg_tx_90d": 40.0}
    derived = derive_one(250.0, SATURDAY_AFTERNOON, stored)
    assert derived["seconds_since_last_login"] == 7200.0
    assert derived["amount_minus_avg_90d"] == 210.0
    assert derived["amount_to_avg_90d"] == 6.25


def test_ratio_is_guarded_when_there_is_no_history() -> None:
    derived = derive_one(250.0, SATURDAY_AFTERNOON, {"last_login_ts": 0, "avg_tx_90d": 0.0})
    assert derived["amount_to_avg_90d"] == 250.0
    assert np.isfinite(derived["amount_to_avg_90d"])


def test_scalar_and_batch_agree_exactly() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    amount = rng.lognormal(3.0, 1.5, n)
    timestamp = rng.integers(0, 2_000_000_000, n)
    last_login = np.where(rng.random(n) < 0.1, 0, timestamp - rng.integers(0, 10**7, n))
    avg = np.where(rng.random(n) < 0.1, 0.0, rng.lognormal(3.0, 1.0, n))
    batch = derive_batch(amount, timestamp, {"last_login_ts": last_login, "avg_tx_90d": avg})
    assert tuple(batch) == DERIVED_FEATURES
    for i in range(n):
        one = derive_one(
            float(amount[i]),
            int(timestamp[i]),
            {"last_login_ts": int(last_login[i]), "avg_tx_90d": float(avg[i])},
        )
        assert tuple(one) == DERIVED_FEATURES
        assert [one[name] for name in DERIVED_FEATURES] == [
            batch[name][i] for name in DERIVED_FEATURES
        ]
