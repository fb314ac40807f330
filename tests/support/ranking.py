"""The ranking example as tests use it, and an oracle for its scores that shares no code
with featserve or the project: rows built from what each feature means."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.project_loader import load_project
from service.harness.served import ROOT

__all__ = ["RANKING", "RANKING_PROJECT", "expected_scores", "oracle_row"]

RANKING_PROJECT = ROOT / "examples" / "ranking"
RANKING = load_project(RANKING_PROJECT)


def oracle_row(
    user: Mapping[str, float], item: Mapping[str, float], timestamp: int
) -> dict[str, float]:
    """Every model input of one (user, item) pair, from the definitions in the README:
    the user's click rate with 10 impressions of prior, whether the item is in the user's
    known favourite category, the item's price over what the user usually pays (at least
    1), and the hour of the day in UTC."""
    favourite = int(user["favourite_category"])
    return {
        **user,
        **item,
        "user_ctr": user["clicks_30d"] / (user["impressions_30d"] + 10.0),
        "category_match": 1.0 if favourite != 0 and favourite == item["item_category"] else 0.0,
        "price_ratio": item["item_price"] / max(user["avg_price_clicked"], 1.0),
        "hour_of_day": float((timestamp % 86400) // 3600),
    }


def expected_scores(
    estimator: Any,
    input_order: list[str],
    user: Mapping[str, float],
    items: list[Mapping[str, float]],
    timestamp: int,
) -> list[float]:
    """The estimator's own ``predict`` of the rows ``oracle_row`` builds, in ``input_order``."""
    rows = [
        [float(oracle_row(user, item, timestamp)[name]) for name in input_order] for item in items
    ]
    return [float(value) for value in estimator.predict(rows)]
