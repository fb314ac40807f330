"""The ranking example's entities and feature groups: a user and the items to rank for it."""

from __future__ import annotations

from datetime import timedelta

from features.project import Entity, Feature, FeatureGroup, Structure

__all__ = ["GROUPS", "ITEM", "ITEM_STATS", "USER", "USER_PROFILE"]

USER = Entity("user", "A reader of the feed whose candidate items are ranked.")
ITEM = Entity("item", "A piece of content that may be shown in the feed.")

CATEGORIES = 20
"""Categories are numbered 1 to 20; 0 stands for "not known"."""

USER_PROFILE = FeatureGroup(
    name="profile",
    entity=USER,
    structure=Structure.HASH,
    freshness=timedelta(hours=6),
    features=(
        Feature("clicks_30d", "int", 0, "Items clicked in the last 30 days.", minimum=0),
        Feature("impressions_30d", "int", 0, "Items shown in the last 30 days.", minimum=0),
        Feature(
            "favourite_category",
            "int",
            0,
            "The category clicked most in 30 days, 1-20; 0 when unknown.",
            minimum=0,
            maximum=CATEGORIES,
        ),
        Feature("avg_price_clicked", "float", 0.0, "Mean price of the items clicked.", minimum=0),
    ),
)

ITEM_STATS = FeatureGroup(
    name="stats",
    entity=ITEM,
    structure=Structure.HASH,
    freshness=timedelta(hours=1),
    features=(
        Feature(
            "item_category", "int", 0, "The item's category, 1-20; 0 when unknown.",
            minimum=0, maximum=CATEGORIES,
        ),
        Feature("item_price", "float", 0.0, "The item's price.", minimum=0),
        Feature(
            "item_ctr_7d", "float", 0.0, "Clicks per impression over 7 days.",
            minimum=0, maximum=1,
        ),
        Feature("item_age_days", "int", 0, "Days since the item was published.", minimum=0),
    ),
)  # fmt: skip

GROUPS = (USER_PROFILE, ITEM_STATS)
