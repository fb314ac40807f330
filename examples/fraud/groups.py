"""The fraud example's entity and feature groups (the table of the README's API section)."""

from __future__ import annotations

from datetime import timedelta

from features.project import Entity, Feature, FeatureGroup, Structure

__all__ = ["GROUPS", "USER", "USER_EMBEDDING", "USER_FEATURES", "USER_RECENT_ITEMS"]

USER = Entity("user", "A card holder whose transactions are scored.")

USER_FEATURES = FeatureGroup(
    name="features",
    entity=USER,
    structure=Structure.HASH,
    freshness=timedelta(hours=1),
    features=(
        Feature("tx_count_1h", "int", 0, "Transactions in the last hour.", minimum=0),
        Feature("tx_sum_1h", "float", 0.0, "Amount spent in the last hour.", minimum=0),
        Feature("tx_count_24h", "int", 0, "Transactions in the last 24 hours.", minimum=0),
        Feature("tx_sum_24h", "float", 0.0, "Amount spent in the last 24 hours.", minimum=0),
        Feature("account_age_days", "int", 0, "Days since the account was opened.", minimum=0),
        Feature("avg_tx_90d", "float", 0.0, "Mean transaction amount over 90 days.", minimum=0),
        Feature("distinct_merchants_7d", "int", 0, "Distinct merchants in 7 days.", minimum=0),
        Feature(
            "credit_score_bucket",
            "int",
            2,
            "Credit score bucket 0-4; 2 is the median.",
            minimum=0,
            maximum=4,
        ),
        Feature("is_premium", "int", 0, "1 for premium accounts.", minimum=0, maximum=1),
        Feature("last_login_ts", "int", 0, "Last login, epoch seconds (UTC).", minimum=0),
    ),
)

USER_RECENT_ITEMS = FeatureGroup(
    name="recent_items",
    entity=USER,
    structure=Structure.SORTED_SET,
    freshness=timedelta(hours=4),
    top_n=10,
    features=(Feature("recent_items", "str_list", (), "Item ids, newest first.", dim=10),),
)

USER_EMBEDDING = FeatureGroup(
    name="embedding",
    entity=USER,
    structure=Structure.STRING,
    freshness=timedelta(hours=48),
    features=(
        Feature(
            "embedding",
            "float32_vector",
            (0.0,) * 16,
            "Behaviour embedding, 16 float32 values packed little-endian.",
            dim=16,
        ),
    ),
)

GROUPS = (USER_FEATURES, USER_RECENT_ITEMS, USER_EMBEDDING)
"""Every group of the example, in the order ``/features`` lists them."""
