"""features/stores/codecs.py: one codec per structure, and what the service asks of it.

The codecs' reads, writes, merges and records are exercised through the stores
(tests/test_redis_store.py, test_backing_stores.py, test_merge_property.py,
test_updates.py, test_capacity.py); here, what no store test reaches."""

from __future__ import annotations

import pytest

from features.registry import Structure
from features.stores.codecs import codec_of
from service.harness.example import EXAMPLE_REGISTRY

GROUPS = [
    g for entity in EXAMPLE_REGISTRY.entities for g in EXAMPLE_REGISTRY.groups_of(entity.name)
]


def test_the_example_has_a_group_of_every_structure() -> None:
    # Otherwise the tests below would leave a codec out.
    assert {group.structure for group in GROUPS} == set(Structure)


@pytest.mark.parametrize("group", GROUPS, ids=lambda group: group.name)
def test_each_group_gets_the_codec_of_its_structure(group) -> None:
    assert codec_of(group).structure is group.structure


def test_an_update_schema_says_what_a_push_may_carry_for_each_structure() -> None:
    # What /push publishes (service/inputs.py) for each kind of feature.
    features = EXAMPLE_REGISTRY.group("user", "features").by_name
    count, amount = features["tx_count_1h"], features["tx_sum_1h"]
    recent = EXAMPLE_REGISTRY.group("user", "recent_items").features[0]
    embedding = EXAMPLE_REGISTRY.group("user", "embedding").features[0]
    schema = {f.name: codec_of(g).update_schema(f) for g in GROUPS for f in g.features}
    assert schema[count.name] == {"type": "integer"}
    assert schema[amount.name] == {"type": "number"}
    assert schema[recent.name] == {"type": "array", "items": {"type": "string"}}
    assert schema[embedding.name] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": embedding.dim,
        "maxItems": embedding.dim,
    }


def test_a_table_needs_the_column_of_a_one_feature_group_only() -> None:
    needs = {group.structure: codec_of(group).required_columns(group) for group in GROUPS}
    one_feature = {group.structure: (group.features[0].name,) for group in GROUPS}
    assert needs[Structure.HASH] == ()
    assert needs[Structure.SORTED_SET] == one_feature[Structure.SORTED_SET]
    assert needs[Structure.STRING] == one_feature[Structure.STRING]
