"""Bad values in Redis hurt only their own keys, through a real `bentoml serve`.

Written into Redis directly, as a producer bug or a hand-typed command would (``/push``
validates and would refuse them): twenty users' feature hashes overwritten by strings, a
credit score bucket outside its declared range, a five-byte embedding. Each is answered
``bad_value`` from the fallbacks (never ``default``, never to the model), counted by group in
``featserve_bad_keys_total``, and every other user's answer stays real.
"""

from __future__ import annotations

import itertools
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RunningService

BAD_HASHES = [f"u{number:06d}" for number in range(10, 30)]
HEALTHY = [f"u{number:06d}" for number in range(100, 140)]


def bad_keys_counted(service: RunningService) -> dict[str, float]:
    """``featserve_bad_keys_total`` by group, from the service's /metrics."""
    text = service.client.get("/metrics").text
    return {
        sample.labels["group"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "featserve_bad_keys"
        for sample in family.samples
        if sample.name == "featserve_bad_keys_total"
    }


def test_twenty_bad_keys_leave_every_other_users_answers_real(service: RunningService) -> None:
    with redis.Redis.from_url(service.redis.url) as admin:
        for entity_id in BAD_HASHES:
            admin.delete(f"user:{{{entity_id}}}:features")
            admin.set(f"user:{{{entity_id}}}:features", "a string where a hash belongs")
    before = bad_keys_counted(service).get("features", 0.0)
    # The bad users take a third of the traffic, far more reads than the breaker's failure
    # count, interleaved with the healthy ones.
    bad_answers: list[dict[str, Any]] = []
    healthy_answers: list[dict[str, Any]] = []
    for bad, healthy in zip(itertools.cycle(BAD_HASHES), HEALTHY * 2, strict=False):
        for entity_id, answers in ((bad, bad_answers), (healthy, healthy_answers)):
            response = service.client.post("/score", json={"entity_id": entity_id, "amount": 5})
            assert response.status_code == 200, response.text
            answers.append(response.json())
    assert {answer["sources"]["features"] for answer in healthy_answers} == {"redis"}
    assert not [answer for answer in healthy_answers if "degraded" in answer]
    assert {answer["sources"]["features"] for answer in bad_answers} == {"unavailable"}
    assert {answer["degraded"]["features"] for answer in bad_answers} == {"bad_value"}
    assert bad_keys_counted(service)["features"] - before == len(bad_answers)


def test_a_value_outside_its_range_never_reaches_the_model(service: RunningService) -> None:
    with redis.Redis.from_url(service.redis.url) as admin:
        admin.hset("user:{u000200}:features", "credit_score_bucket", "99")
        admin.set("user:{u000201}:embedding", b"short")
    response = service.client.post("/features", json={"entity_ids": ["u000200", "u000201"]})
    assert response.status_code == 200, response.text
    out_of_range, short = response.json()["entities"]
    features = out_of_range["groups"]["features"]
    assert (features["source"], out_of_range["degraded"]) == (
        "unavailable",
        {"features": "bad_value"},
    )
    assert features["values"]["credit_score_bucket"] == 2  # the training default, not 99
    assert short["groups"]["embedding"]["source"] == "unavailable"
    assert short["degraded"] == {"embedding": "bad_value"}
    assert short["groups"]["features"]["source"] == "redis"
    scored = service.client.post("/score", json={"entity_id": "u000200", "amount": 5}).json()
    assert scored["degraded"] == {"features": "bad_value"}
