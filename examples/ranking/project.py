"""The ranking example: a user and up to 100 candidate items, one score per item.

Serve it with ``make serve PROJECT=examples/ranking``.  A request names the user
(``user_id``) and the items to rank (``item_ids``); every group of the user and
of each item is read in one round trip per Redis node, and the answer scores
each item in request order (``top_k`` keeps the best, best first).  The model
is a regression of the chance that the user engages with the item; two of its
derived features cross the user and the item (``category_match``,
``price_ratio``).  Keys carry the prefix ``rank:`` (``rank:item:{i000001}:stats``),
so this project shares a Redis with others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from sklearn.ensemble import GradientBoostingRegressor

from features.project import (
    DerivedFeatures,
    LatencyBudget,
    ModelSpec,
    Project,
    RegressionValue,
    RequestEntity,
    RequestInput,
)

from .data import item_id, training_table, user_id, write_tables
from .derived import DERIVED_FEATURES, READS, derive_batch, derive_one
from .groups import GROUPS, ITEM, ITEM_STATS, USER

__all__ = ["PROJECT"]

DEMO_SEED = 20261206


def gradient_boosting(seed: int) -> GradientBoostingRegressor:
    """80 trees of depth 3: the interactions (a category match matters more to a user who
    clicks often) need trees, and 100 rows predict in well under a millisecond."""
    return GradientBoostingRegressor(
        n_estimators=80, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
    )


class RankingDemo:
    """Demo users and items, and impressions to train on."""

    def entity_id(self, index: int, entity: str | None = None) -> str:
        """``u000123`` for users, ``i000123`` for items."""
        return item_id(index) if entity == ITEM.name else user_id(index)

    def write_tables(
        self, out_dir: Path, n_entities: int, now: int, fmt: Literal["parquet", "csv"]
    ) -> Mapping[str, Path]:
        """``user:profile`` of ``n_entities`` users and ``item:stats`` of five times as many
        items (at least 100)."""
        return write_tables(out_dir, n_entities, now, DEMO_SEED, fmt)

    def training_table(self, n_entities: int, n_rows: int, seed: int, now: int) -> Any:
        """``n_rows`` labelled impressions (see ``data.training_table``)."""
        return training_table(n_entities, n_rows, seed, now)


PROJECT = Project(
    name="ranking",
    title="featserve feed ranking",
    description="Ranks candidate items for a user with both entities' features from Redis: "
    "one round trip per Redis node for the user and every item, one score per item.",
    version="1.0",
    entity=USER,
    entity_field="user_id",
    request_entities=(
        RequestEntity(
            "item_ids",
            ITEM,
            candidates=True,
            max_count=100,
            description="The candidate items to rank, at most 100.",
            answer_field="item_id",
        ),
    ),
    groups=GROUPS,
    request=(
        RequestInput(
            "timestamp",
            "timestamp",
            "When the feed is shown, epoch seconds (UTC); defaults to now.",
            minimum=0,
            maximum=4_102_444_800,
            required=False,
            example=1764230400,
        ),
    ),
    derived=DerivedFeatures(DERIVED_FEATURES, READS, derive_one, derive_batch),
    model=ModelSpec(
        inputs=(
            "clicks_30d",
            "impressions_30d",
            *(name for name in ITEM_STATS.feature_names if name != "item_category"),
            *DERIVED_FEATURES,
        ),
        answer=RegressionValue("Predicted chance that the user engages with the item, 0 to 1."),
        estimator=gradient_boosting,
    ),
    budget=LatencyBudget(total_ms=100, features_ms=20),
    key_prefix="rank:",
    demo=RankingDemo(),
)
