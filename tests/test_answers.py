"""Reading featserve answers for their sources: bodies written by hand, counts by hand."""

from __future__ import annotations

import json

from service.harness.answers import AnswerMix, answer_mix


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_score_answer_from_redis_is_real() -> None:
    mix = answer_mix(body({"score": 0.1, "sources": {"features": "redis"}}))
    assert mix == AnswerMix(answers=1, degraded=0, sources=(("redis", 1),))


def test_a_marked_answer_is_degraded_whatever_its_source() -> None:
    document = {"sources": {"features": "backing"}, "degraded": {"features": "store_error"}}
    assert answer_mix(body(document)) == AnswerMix(1, 1, (("backing", 1),))


def test_stale_and_unavailable_are_degraded_default_is_not() -> None:
    results = [
        {"sources": {"features": "stale"}},
        {"sources": {"features": "unavailable"}},
        {"sources": {"features": "default"}},
        {"sources": {"features": "cache"}},
    ]
    mix = answer_mix(body({"threshold": 0.2, "results": results}))
    assert mix == AnswerMix(4, 2, (("cache", 1), ("default", 1), ("stale", 1), ("unavailable", 1)))


def test_features_entities_count_their_groups() -> None:
    entities = [
        {
            "entity_id": "a",
            "groups": {"features": {"source": "redis"}, "embedding": {"source": "redis"}},
        },
        {
            "entity_id": "b",
            "groups": {"features": {"source": "unavailable"}, "embedding": {"source": "stale"}},
            "degraded": {"features": "deadline", "embedding": "deadline"},
        },
    ]
    mix = answer_mix(body({"entities": entities}))
    assert mix == AnswerMix(2, 1, (("redis", 2), ("stale", 1), ("unavailable", 1)))


def test_bodies_without_answers() -> None:
    assert answer_mix(b"not json") is None
    assert answer_mix(body([1, 2])) is None
    assert answer_mix(body({"error": "amount: Input should be a valid number"})) is None
