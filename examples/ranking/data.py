"""Synthetic users, items and impressions for the ranking example.

``user_id(i)`` and ``item_id(i)`` name demo entities ``u000000``... and
``i000000``...; ``write_tables`` writes one table per feature group for
``featserve materialize``; ``training_table`` draws impressions (a user shown
an item at some hour) labelled with how likely the user is to engage: higher
in the user's favourite category, for items others click, for prices near
what the user usually pays, and in the evening.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .derived import derive_batch
from .groups import CATEGORIES, ITEM_STATS, USER_PROFILE

__all__ = ["item_id", "training_table", "user_id", "write_tables"]

Column = npt.NDArray[Any]

ITEMS_PER_USER = 5
"""Demo items per demo user: a ranking request asks about many items."""


def user_id(index: int) -> str:
    """``u`` and six digits: ``u000123``."""
    return f"u{index:06d}"


def item_id(index: int) -> str:
    """``i`` and six digits: ``i000123``."""
    return f"i{index:06d}"


def items_for(n_users: int) -> int:
    """How many demo items go with ``n_users`` demo users."""
    return max(100, ITEMS_PER_USER * n_users)


def draw_users(n: int, seed: int) -> dict[str, Column]:
    """The ``user:profile`` columns of ``n`` users."""
    rng = np.random.default_rng(seed)
    impressions = rng.poisson(rng.lognormal(np.log(300.0), 0.8, n))
    clicks = rng.binomial(impressions, rng.beta(2.0, 30.0, n))
    known = rng.random(n) < 0.9
    return {
        "clicks_30d": clicks.astype(np.int64),
        "impressions_30d": impressions.astype(np.int64),
        "favourite_category": np.where(known, rng.integers(1, CATEGORIES + 1, n), 0),
        "avg_price_clicked": np.round(rng.lognormal(np.log(25.0), 0.6, n), 2),
    }


def draw_items(n: int, seed: int) -> dict[str, Column]:
    """The ``item:stats`` columns of ``n`` items."""
    rng = np.random.default_rng(seed)
    return {
        "item_category": rng.integers(1, CATEGORIES + 1, n),
        "item_price": np.round(rng.lognormal(np.log(25.0), 0.8, n), 2),
        "item_ctr_7d": np.round(rng.beta(2.0, 40.0, n), 4),
        "item_age_days": rng.integers(0, 365, n),
    }


def training_table(n_users: int, n_rows: int, seed: int, now: int) -> dict[str, Column]:
    """``n_rows`` labelled impressions of ``n_users`` users and their items: every stored
    feature, ``timestamp`` and ``label`` (the chance of engagement, 0 to 1)."""
    rng = np.random.default_rng(seed)
    users = draw_users(n_users, seed + 1)
    items = draw_items(items_for(n_users), seed + 2)
    who = rng.integers(0, n_users, n_rows)
    what = rng.integers(0, items_for(n_users), n_rows)
    table = {name: column[who] for name, column in users.items()}
    table |= {name: column[what] for name, column in items.items()}
    table["timestamp"] = now - rng.integers(0, 30 * 86400, n_rows)
    derived = derive_batch(table)
    evening = (derived["hour_of_day"] >= 18) & (derived["hour_of_day"] <= 22)
    logit = (
        -2.5
        + 2.0 * derived["category_match"]
        + 12.0 * table["item_ctr_7d"]
        + 6.0 * derived["user_ctr"]
        - 0.9 * np.abs(np.log(derived["price_ratio"] + 1e-3))
        + 0.4 * evening
        - 0.002 * table["item_age_days"]
    )
    engagement = 1.0 / (1.0 + np.exp(-(logit + rng.normal(0.0, 0.3, n_rows))))
    table["label"] = np.round(engagement, 4)
    return table


def write_tables(
    out_dir: Path, n_users: int, now: int, seed: int, fmt: Literal["parquet", "csv"]
) -> dict[str, Path]:
    """One table per group (``entity_id``, ``event_timestamp`` and its features) of demo
    users ``u000000`` onwards and their items; the paths by ``entity:group``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_items = items_for(n_users)
    paths = {}
    for group, ids, columns in (
        (USER_PROFILE, [user_id(i) for i in range(n_users)], draw_users(n_users, seed + 1)),
        (ITEM_STATS, [item_id(i) for i in range(n_items)], draw_items(n_items, seed + 2)),
    ):
        table = pa.table(
            {
                "entity_id": pa.array(ids, pa.string()),
                "event_timestamp": pa.array(np.full(len(ids), now), pa.int64()),
                **{name: pa.array(column) for name, column in columns.items()},
            }
        )
        path = out_dir / f"{group.entity.name}_{group.name}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            pa_csv.write_csv(table, path)
        paths[f"{group.entity.name}:{group.name}"] = path
    return paths
