"""The registry: the example's declarations, TTLs, and bad declarations refused by name."""

from __future__ import annotations

from datetime import timedelta

import pytest

from features.errors import RegistryError
from features.registry import Entity, Feature, FeatureGroup, Registry, Structure
from service.harness.example import EXAMPLE_REGISTRY

USER = Entity("user")


def hash_group(*features: Feature, name: str = "g") -> FeatureGroup:
    return FeatureGroup(name, USER, Structure.HASH, timedelta(hours=1), features)


def test_shipped_fraud_group_matches_the_mission_table() -> None:
    group = EXAMPLE_REGISTRY.group("user", "features")
    assert group.structure is Structure.HASH
    assert dict(group.defaults) == {
        "tx_count_1h": 0,
        "tx_sum_1h": 0.0,
        "tx_count_24h": 0,
        "tx_sum_24h": 0.0,
        "account_age_days": 0,
        "avg_tx_90d": 0.0,
        "distinct_merchants_7d": 0,
        "credit_score_bucket": 2,
        "is_premium": 0,
        "last_login_ts": 0,
    }
    assert [f.type_name for f in group.features].count("int") == 7


@pytest.mark.parametrize(
    ("group", "structure", "ttl"),
    [
        ("features", Structure.HASH, timedelta(hours=2)),
        ("recent_items", Structure.SORTED_SET, timedelta(hours=8)),
        ("embedding", Structure.STRING, timedelta(hours=96)),
    ],
)
def test_every_structure_is_shipped_with_ttl_twice_its_freshness(
    group: str, structure: Structure, ttl: timedelta
) -> None:
    declared = EXAMPLE_REGISTRY.group("user", group)
    assert declared.structure is structure
    assert declared.ttl == ttl


def test_defaults_are_normalized_and_immutable() -> None:
    embedding = EXAMPLE_REGISTRY.group("user", "embedding").features[0]
    assert embedding.default == (0.0,) * 16
    assert isinstance(embedding.default, tuple)
    with pytest.raises(TypeError):
        EXAMPLE_REGISTRY.group("user", "features").defaults["tx_count_1h"] = 5  # type: ignore[index]


def test_duplicate_feature_names_are_refused_by_name() -> None:
    with pytest.raises(RegistryError, match=r"duplicate feature names \['a'\]"):
        hash_group(Feature("a", "int", 0), Feature("a", "float", 0.0))


def test_a_default_of_the_wrong_type_is_refused_by_name() -> None:
    with pytest.raises(RegistryError, match=r"feature 'count': default 0\.5 is not a valid int"):
        Feature("count", "int", 0.5)


def test_an_unknown_dtype_is_refused_by_name() -> None:
    with pytest.raises(RegistryError, match="feature 'x': unknown dtype 'decimal'"):
        Feature("x", "decimal", 0)


def test_a_vector_default_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(RegistryError, match="expected 4 values, got 3"):
        Feature("v", "float32_vector", (0.0, 0.0, 0.0), dim=4)


def test_a_hash_group_refuses_list_features() -> None:
    with pytest.raises(RegistryError, match="a hash holds int or float features"):
        hash_group(Feature("items", "str_list", ()))


def test_a_sorted_set_group_needs_top_n() -> None:
    with pytest.raises(RegistryError, match="needs top_n"):
        FeatureGroup(
            "recent",
            USER,
            Structure.SORTED_SET,
            timedelta(hours=1),
            (Feature("r", "str_list", ()),),
        )


def test_duplicate_groups_are_refused() -> None:
    group = hash_group(Feature("a", "int", 0))
    with pytest.raises(RegistryError, match="duplicate feature group user:g"):
        Registry([group, group])


def test_unknown_lookups_name_what_is_known() -> None:
    with pytest.raises(RegistryError, match=r"unknown entity type 'card' \(known: user\)"):
        EXAMPLE_REGISTRY.group("card", "features")
    with pytest.raises(RegistryError, match="unknown feature group user:risk"):
        EXAMPLE_REGISTRY.group("user", "risk")


def test_a_default_outside_the_declared_range_is_refused() -> None:
    with pytest.raises(RegistryError, match="feature 'bucket': default 7 is above the maximum 4"):
        Feature("bucket", "int", 7, minimum=0, maximum=4)


def test_names_starting_with_underscore_are_reserved() -> None:
    with pytest.raises(RegistryError, match="reserved"):
        Feature("_event_ms", "int", 0)
