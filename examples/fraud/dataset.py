"""A deterministic synthetic fraud dataset: users, their transactions, fraud labels.

``generate_users`` draws a snapshot of the ``user:features`` group for
``n_users`` users, as the online store would hold it at ``now``; the demo
data loaded into Redis comes from it.  ``generate_transactions`` draws
transactions of those users over the ``HISTORY_DAYS`` days before ``now``.
Each transaction sees its user's snapshot as of its own time: the same
counts and aggregates, and a last login as long before the transaction as
the user's last login is before ``now``.

A transaction's label is drawn from a logistic function of what makes fraud
likely: a burst of transactions in the last hour against the day's rate, a
new account, an amount far above the user's 90-day mean, many distinct
merchants, a purchase between midnight and 6 am, a long time since the last
login, a low credit bucket (premium accounts are a little safer).

A ``missing_fraction`` of transactions belong to entities the online store
does not know.  Their labels come from the same function of their true
(hidden) profile, but their stored features are the registry defaults: what
the service serves when every store misses, so the model learns them.

Everything is drawn from ``numpy.random.default_rng(seed)``: equal arguments,
equal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .groups import USER_FEATURES

__all__ = [
    "HISTORY_DAYS",
    "Column",
    "TransactionSet",
    "UserTable",
    "entity_id",
    "generate_transactions",
    "generate_users",
    "training_table",
]

HISTORY_DAYS = 28
"""Transactions are spread over this many whole (UTC) days before ``now``."""

_GROUP = USER_FEATURES
_DAY = 86_400
_HOUR = 3_600

# Share of legitimate activity per hour of day (UTC): quiet at night, busy by day.
_HOUR_WEIGHTS = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.0, 3.0, 3.5, 3.8, 4.0,
     4.2, 4.0, 3.8, 3.6, 3.6, 3.8, 4.0, 4.0, 3.5, 3.0, 2.2, 1.5]
)  # fmt: skip
_CREDIT_BUCKET_SHARES = (0.08, 0.20, 0.40, 0.22, 0.10)

Column = npt.NDArray[Any]
"""A feature column: int64 for int features, float64 for float ones."""
_Array = TypeVar("_Array", bound=np.ndarray)


def entity_id(index: int) -> str:
    """The id of user number ``index``: ``u`` and at least six digits, e.g. ``u000123``."""
    return f"u{index:06d}"


@dataclass(frozen=True, eq=False)
class UserTable:
    """A snapshot of ``user:features`` for many users; ``columns`` follow the registry order."""

    entity_ids: tuple[str, ...]
    columns: Mapping[str, Column]
    """One read-only column per feature: int64 for int features, float64 for float ones."""

    def __len__(self) -> int:
        return len(self.entity_ids)

    def record(self, index: int) -> dict[str, int | float]:
        """The features of user ``index`` as Python ints and floats, ready for ``HSET``."""
        return {name: column[index].item() for name, column in self.columns.items()}


@dataclass(frozen=True, eq=False)
class TransactionSet:
    """Transactions with what the model is given for each, and its fraud label."""

    entity_ids: tuple[str, ...]
    missing: npt.NDArray[np.bool_]
    """True where the entity is absent from the online store."""
    stored: Mapping[str, Column]
    """Per feature of ``user:features``, the stored value each transaction is scored with."""
    amount: npt.NDArray[np.float64]
    timestamp: npt.NDArray[np.int64]
    """Epoch seconds (UTC)."""
    label: npt.NDArray[np.int8]
    """1 for fraud, 0 otherwise."""

    def __len__(self) -> int:
        return len(self.entity_ids)

    @property
    def fraud_rate(self) -> float:
        """The share of transactions labelled fraud."""
        return float(self.label.mean())


def generate_users(n_users: int, seed: int, now: int) -> UserTable:
    """Users ``u000000`` .. with features drawn as the online store would hold them at ``now``."""
    columns = _draw_profiles(np.random.default_rng(seed), n_users, now)
    return UserTable(tuple(entity_id(i) for i in range(n_users)), _read_only(columns))


def generate_transactions(
    users: UserTable, n: int, seed: int, now: int, missing_fraction: float = 0.05
) -> TransactionSet:
    """``n`` labelled transactions of ``users`` (and of unknown entities) before ``now``."""
    if not 0.0 <= missing_fraction <= 1.0:
        raise ValueError(f"missing_fraction must be within [0, 1], got {missing_fraction}")
    rng = np.random.default_rng(seed)
    user_index = rng.integers(len(users), size=n)
    missing = rng.random(n) < missing_fraction
    n_missing = int(missing.sum())
    hidden = _draw_profiles(rng, n_missing, now)
    profile = {}
    for name, column in users.columns.items():
        profile[name] = column[user_index]
        profile[name][missing] = hidden[name]

    unknown_ids = iter(entity_id(len(users) + k) for k in range(n_missing))
    ids = tuple(
        next(unknown_ids) if is_missing else users.entity_ids[index]
        for index, is_missing in zip(user_index.tolist(), missing.tolist(), strict=True)
    )

    day = now // _DAY - HISTORY_DAYS + rng.integers(HISTORY_DAYS, size=n)
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    timestamp = day * _DAY + hour * _HOUR + rng.integers(_HOUR, size=n)
    profile["last_login_ts"] = timestamp - (now - profile["last_login_ts"])

    unusual = rng.random(n) < 0.04
    spread = np.where(unusual, rng.lognormal(np.log(5.0), 0.6, n), rng.lognormal(0.0, 0.5, n))
    amount = np.maximum(np.round(profile["avg_tx_90d"] * spread, 2), 0.5)

    logit = _fraud_logit(profile, amount, hour, timestamp)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    stored = {
        name: np.where(missing, np.asarray(default, dtype=profile[name].dtype), profile[name])
        for name, default in _GROUP.defaults.items()
    }
    return TransactionSet(
        entity_ids=ids,
        missing=_frozen(missing),
        stored=_read_only(stored),
        amount=_frozen(amount),
        timestamp=_frozen(timestamp),
        label=_frozen(label),
    )


def training_table(n_users: int, n_transactions: int, seed: int, now: int) -> dict[str, Column]:
    """Labelled transactions as training columns: the stored features they are scored
    with, ``amount``, ``timestamp`` and ``label``."""
    users = generate_users(n_users, seed, now)
    transactions = generate_transactions(users, n_transactions, seed + 1, now)
    return {
        **transactions.stored,
        "amount": transactions.amount,
        "timestamp": transactions.timestamp,
        "label": transactions.label,
    }


def _draw_profiles(rng: np.random.Generator, n: int, now: int) -> dict[str, Column]:
    """Feature columns of ``n`` users at ``now``, in registry order."""
    daily_rate = rng.lognormal(np.log(3.0), 0.8, n)
    # A few accounts are in a burst right now (a stolen card being drained).
    burst = np.where(rng.random(n) < 0.03, 1 + rng.poisson(4.0, n), 0)
    usual_24h = rng.poisson(daily_rate)
    count_24h = usual_24h + burst
    count_1h = rng.binomial(usual_24h, 1 / 16) + burst

    avg_tx_90d = np.round(rng.lognormal(np.log(45.0), 0.7, n), 2)
    usual_sum_1h = (count_1h - burst) * avg_tx_90d * rng.lognormal(0.0, 0.3, n)
    burst_sum = burst * avg_tx_90d * rng.lognormal(np.log(3.0), 0.5, n)
    sum_1h = np.round(usual_sum_1h + burst_sum, 2)
    sum_24h = np.round(sum_1h + (count_24h - count_1h) * avg_tx_90d * rng.lognormal(0, 0.3, n), 2)

    weekly = rng.poisson(daily_rate * 7)
    distinct_merchants = rng.binomial(weekly, 0.35) + np.where(burst > 0, rng.poisson(5.0, n), 0)
    credit = rng.choice(len(_CREDIT_BUCKET_SHARES), size=n, p=_CREDIT_BUCKET_SHARES)
    premium = rng.random(n) < 0.05 + 0.05 * credit

    # Most users logged in within days; some accounts have been dormant for months.
    dormant = rng.random(n) < 0.05
    away = np.where(dormant, rng.uniform(30, 180, n), rng.exponential(2.0, n)) * _DAY
    columns = {
        "tx_count_1h": count_1h,
        "tx_sum_1h": sum_1h,
        "tx_count_24h": count_24h,
        "tx_sum_24h": sum_24h,
        "account_age_days": np.minimum(rng.exponential(700.0, n), 3650.0),
        "avg_tx_90d": avg_tx_90d,
        "distinct_merchants_7d": distinct_merchants,
        "credit_score_bucket": credit,
        "is_premium": premium,
        "last_login_ts": now - away.astype(np.int64),
    }
    dtypes = {"int": np.int64, "float": np.float64}
    return {
        feature.name: columns[feature.name].astype(dtypes[feature.type_name])
        for feature in _GROUP.features
    }


def _fraud_logit(
    profile: Mapping[str, Column],
    amount: npt.NDArray[np.float64],
    hour: npt.NDArray[np.int64],
    timestamp: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """Log-odds of fraud from a transaction's true profile, amount and time."""
    velocity = np.log1p(profile["tx_count_1h"]) - np.log1p(profile["tx_count_24h"] / 24)
    new_account = np.exp(-profile["account_age_days"] / 20)
    above_usual = np.maximum(np.log(amount / np.maximum(profile["avg_tx_90d"], 1.0)) - 0.5, 0)
    merchants = np.maximum(profile["distinct_merchants_7d"] - 6, 0)
    days_away = (timestamp - profile["last_login_ts"]) / _DAY
    dormant = np.maximum(np.log1p(days_away) - 2.5, 0)
    log_odds: npt.NDArray[np.float64] = (
        -6.0
        + 1.2 * velocity
        + 1.8 * new_account
        + 1.0 * above_usual
        + 0.15 * merchants
        + 1.0 * (hour < 6)
        + 0.8 * dormant
        + 0.25 * (2 - profile["credit_score_bucket"])
        - 0.5 * profile["is_premium"]
    )
    return log_odds


def _frozen(array: _Array) -> _Array:
    array.setflags(write=False)
    return array


def _read_only(columns: Mapping[str, Column]) -> Mapping[str, Column]:
    return MappingProxyType({name: _frozen(column) for name, column in columns.items()})
