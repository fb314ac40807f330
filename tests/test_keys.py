"""Key layout and entity id validation."""

from __future__ import annotations

import re

import pytest

from features.errors import InvalidEntityId
from features.keys import ENTITY_ID_PATTERN, feature_key, validate_entity_id


def test_key_puts_the_id_in_a_cluster_hash_tag() -> None:
    assert feature_key("user", "u000123", "features") == "user:{u000123}:features"


@pytest.mark.parametrize("entity_id", ["u000123", "m-441_x.y", "a" * 128, "ünïcode", "x:y"])
def test_valid_ids_pass(entity_id: str) -> None:
    assert validate_entity_id(entity_id) == entity_id
    assert re.fullmatch(ENTITY_ID_PATTERN, entity_id)


@pytest.mark.parametrize(
    ("entity_id", "reason"),
    [
        ("", "empty"),
        ("a" * 129, "129 characters long, at most 128"),
        ("u 1", "whitespace"),
        ("u1\n", "whitespace"),
        ("u\t1", "whitespace"),
        ("u\x001", "control character"),
        ("u\x7f", "control character"),
        ("u{1}", "brace"),
        ("}", "brace"),
        (123, "must be a string"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(entity_id: object, reason: str) -> None:
    with pytest.raises(InvalidEntityId, match=re.escape(reason)):
        validate_entity_id(entity_id)
    if isinstance(entity_id, str):
        assert not re.fullmatch(ENTITY_ID_PATTERN, entity_id)


def test_no_key_is_built_for_a_bad_id() -> None:
    with pytest.raises(InvalidEntityId):
        feature_key("user", "u}:evil:{x", "features")
