"""Scores checked against an independent oracle: the model's own ``predict_proba`` on rows the
test builds from values it wrote to Redis itself (``tests.support.oracle``).

Nothing on the oracle's side goes through featserve's code: the values are written with a
plain redis-py ``HSET``, the derived features are computed from their definitions with
``datetime``, and the model is read straight from the BentoML home (its pickled estimator
and the input order, defaults and threshold its metadata declares).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import PATIENT, start_service, stop
from tests.support.oracle import Model, expected_score, fraud_model

STORED = {
    "oracle-full": {
        "tx_count_1h": 7, "tx_sum_1h": 1830.5, "tx_count_24h": 19, "tx_sum_24h": 4020.25,
        "account_age_days": 12, "avg_tx_90d": 61.75, "distinct_merchants_7d": 9,
        "credit_score_bucket": 0, "is_premium": 0, "last_login_ts": 1764300000,
    },
    "oracle-partial": {"tx_count_1h": 1, "avg_tx_90d": 0.5, "last_login_ts": 1764499000},
}  # fmt: skip
"""What the test writes to Redis; ``oracle-unknown`` gets nothing."""

REQUESTS = [
    ("oracle-full", 2500.0, 1764423723),  # a Saturday, 13:42 UTC
    ("oracle-partial", 19.99, 1764230400),  # a Thursday, 08:00 UTC
    ("oracle-unknown", 300.0, 1764316799),  # a Friday, 07:59:59 UTC
]


@pytest.fixture(scope="module")
def served(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, redis.Redis]]:
    with LocalRedis() as redis_server, redis.Redis.from_url(redis_server.url) as client:
        for entity_id, values in STORED.items():
            client.hset(f"user:{{{entity_id}}}:features", mapping=values)
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_CACHE_TTL_S="0",
            **PATIENT,
        )
        try:
            yield url, client
        finally:
            stop(process)


@pytest.fixture(scope="module")
def model(bentoml_home: Path) -> Model:
    return fraud_model(bentoml_home)


def oracle(model: Model, entity_id: str, amount: float, timestamp: int) -> float:
    return expected_score(model, STORED.get(entity_id, {}), amount, timestamp)


def test_the_days_in_the_requests_are_what_their_comments_say() -> None:
    days = [datetime.fromtimestamp(ts, UTC).strftime("%A %H:%M") for _, _, ts in REQUESTS]
    assert days == ["Saturday 13:42", "Thursday 08:00", "Friday 07:59"]


@pytest.mark.parametrize(("entity_id", "amount", "timestamp"), REQUESTS)
def test_score_is_the_models_probability(
    served: tuple[str, redis.Redis],
    model: Model,
    entity_id: str,
    amount: float,
    timestamp: int,
) -> None:
    url, _ = served
    body = {"entity_id": entity_id, "amount": amount, "timestamp": timestamp}
    answer = httpx.post(f"{url}/score", json=body).json()
    expected = oracle(model, entity_id, amount, timestamp)
    threshold = model[1]["threshold"]
    assert answer["score"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert answer["threshold"] == threshold
    assert answer["is_fraud"] is (expected >= threshold)


def test_a_batch_scores_each_row_as_the_model_does(
    served: tuple[str, redis.Redis], model: Model
) -> None:
    url, _ = served
    requests = [{"entity_id": e, "amount": a, "timestamp": t} for e, a, t in REQUESTS]
    answer = httpx.post(f"{url}/score_batch", json={"requests": requests}).json()
    assert [result["entity_id"] for result in answer["results"]] == [e for e, _, _ in REQUESTS]
    scores = [result["score"] for result in answer["results"]]
    expected = [oracle(model, e, a, t) for e, a, t in REQUESTS]
    assert scores == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # The three rows differ enough that a mix-up of rows or columns would show.
    assert len({round(score, 6) for score in expected}) == 3
