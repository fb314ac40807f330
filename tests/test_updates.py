"""The rule book for feature updates: what is accepted, normalized, or refused by name."""

from __future__ import annotations

import re
from typing import Any

import pytest

from features.errors import InvalidUpdate
from features.ingest.updates import parse_update
from service.harness.example import EXAMPLE_REGISTRY

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
NOW = 1764230400


def test_a_valid_hash_update_is_normalized() -> None:
    update = parse_update(FEATURES, "u1", NOW + 0.25, {"tx_count_1h": 3, "tx_sum_1h": 7})
    assert update.entity_id == "u1"
    assert update.event_ms == NOW * 1000 + 250
    assert update.values == {"tx_count_1h": 3, "tx_sum_1h": 7.0}
    assert isinstance(update.values["tx_sum_1h"], float)


def test_null_values_are_not_written() -> None:
    update = parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 3, "tx_sum_1h": None})
    assert update.values == {"tx_count_1h": 3}


def test_sorted_set_items_are_scored_by_the_event_time() -> None:
    update = parse_update(RECENT, "u1", NOW, {"recent_items": ["i1", "i2"]})
    assert update.values == {"i1": float(NOW), "i2": float(NOW)}


def test_an_embedding_is_rounded_to_float32() -> None:
    update = parse_update(EMBEDDING, "u1", NOW, {"embedding": [0.1] * 16})
    assert update.values["embedding"][0] == pytest.approx(0.1, rel=1e-7)
    assert update.values["embedding"][0] != 0.1


@pytest.mark.parametrize(
    ("group_name", "entity_id", "timestamp", "values", "field", "problem"),
    [
        ("features", "u 1", NOW, {"tx_count_1h": 1}, "entity_id", "whitespace"),
        ("features", "", NOW, {"tx_count_1h": 1}, "entity_id", "empty"),
        ("features", "u1", "noon", {"tx_count_1h": 1}, "event_timestamp", "epoch seconds"),
        ("features", "u1", NOW * 1000, {"tx_count_1h": 1}, "event_timestamp", "between 0"),
        ("features", "u1", -1, {"tx_count_1h": 1}, "event_timestamp", "between 0"),
        ("features", "u1", float("nan"), {"tx_count_1h": 1}, "event_timestamp", "between 0"),
        ("features", "u1", True, {"tx_count_1h": 1}, "event_timestamp", "got bool"),
        ("features", "u1", NOW, {}, "values", "non-empty"),
        ("features", "u1", NOW, {"tx_count_1h": None}, "values", "every value is null"),
        ("features", "u1", NOW, {"velocity": 1}, "values", "['velocity'] not in user:features"),
        ("features", "u1", NOW, {"tx_count_1h": 1.5}, "tx_count_1h", "expected an int"),
        ("features", "u1", NOW, {"tx_count_1h": "3"}, "tx_count_1h", "expected an int"),
        ("features", "u1", NOW, {"tx_count_1h": -1}, "tx_count_1h", "below the minimum 0"),
        ("features", "u1", NOW, {"last_login_ts": 2**63}, "last_login_ts", "fit in 64 bits"),
        ("features", "u1", NOW, {"credit_score_bucket": 5}, "credit_score_bucket", "above"),
        ("features", "u1", NOW, {"tx_sum_1h": float("inf")}, "tx_sum_1h", "not finite"),
        ("features", "u1", NOW, {"tx_sum_1h": 10**400}, "tx_sum_1h", "too large"),
        ("embedding", "u1", NOW, {"embedding": [1e300] * 16}, "embedding", "(float32)"),
        ("embedding", "u1", NOW, {"embedding": [10**400] * 16}, "embedding", "(float32)"),
        ("embedding", "u1", NOW, {"embedding": [0.0] * 15}, "embedding", "expected 16 values"),
        ("embedding", "u1", NOW, {"embedding": "0 1"}, "embedding", "expected a sequence"),
        ("recent_items", "u1", NOW, {"recent_items": []}, "recent_items", "non-empty list"),
        ("recent_items", "u1", NOW, {"recent_items": [7]}, "recent_items", "item id must be"),
        # Item ids follow the entity ids' rule (features.keys.validate_id).
        ("recent_items", "u1", NOW, {"recent_items": ["a\x00b"]}, "recent_items", "U+0000"),
        ("recent_items", "u1", NOW, {"recent_items": ["\u202eevil"]}, "recent_items", "U+202E"),
        ("recent_items", "u1", NOW, {"recent_items": ["i\u3164"]}, "recent_items", "U+3164"),
        ("recent_items", "u1", NOW, {"recent_items": ["i1", ""]}, "recent_items", "empty"),
        ("recent_items", "u1", NOW, {"recent_items": ["i" * 129]}, "recent_items", "at most 128"),
    ],
)
def test_bad_updates_are_refused_naming_the_field(
    group_name: str,
    entity_id: str,
    timestamp: Any,
    values: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    group = EXAMPLE_REGISTRY.group("user", group_name)
    with pytest.raises(InvalidUpdate, match=re.escape(problem)) as refused:
        parse_update(group, entity_id, timestamp, values)
    assert refused.value.field == field


def test_event_times_ahead_of_now_beyond_the_clock_skew_are_refused() -> None:
    now_ms = NOW * 1000
    on_time = parse_update(
        FEATURES, "u1", NOW + 300, {"tx_count_1h": 1}, now_ms=now_ms, max_skew_ms=300_000
    )
    assert on_time.event_ms == now_ms + 300_000
    with pytest.raises(InvalidUpdate, match="86,400 s ahead of now; at most 300 s") as refused:
        parse_update(
            FEATURES, "u1", NOW + 86400, {"tx_count_1h": 1}, now_ms=now_ms, max_skew_ms=300_000
        )
    assert refused.value.field == "event_timestamp"
    with pytest.raises(InvalidUpdate, match="0 s ahead is accepted"):
        parse_update(FEATURES, "u1", NOW + 0.001, {"tx_count_1h": 1}, now_ms=now_ms)
