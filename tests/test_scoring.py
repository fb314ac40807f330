"""The scorer: one store round trip and one model call per batch, the same scores either way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis

from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.stores.redis import async_redis_store
from features.timing import StageTimer
from models.schema import InputBuilder
from models.train import DEFAULT_NOW, TrainResult, train
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE, EXAMPLE_REGISTRY
from service.scoring import Scorer, ScoreRequest

NOON = 1764417600


class CountingClassifier:
    """A real trained estimator that counts how often it is asked."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.calls: list[int] = []

    def predict_proba(self, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self.calls.append(len(inputs))
        result: npt.NDArray[np.float64] = self.estimator.predict_proba(inputs)
        return result


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    assert EXAMPLE.demo is not None
    return train(EXAMPLE, EXAMPLE.demo.training_table(500, 3000, 5, DEFAULT_NOW), seed=5)


def request(entity_id: str, amount: float, timestamp: int) -> ScoreRequest:
    return ScoreRequest(entity_id, {"amount": amount, "timestamp": timestamp})


def score(
    settings: Settings, trained: TrainResult, requests: list[ScoreRequest]
) -> tuple[list[Any], list[int], dict[str, float]]:
    classifier = CountingClassifier(trained.estimator)

    async def scenario() -> list[Any]:
        store = async_redis_store(settings)
        cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
        resolver = Resolver(EXAMPLE_REGISTRY, [redis_tier(store, settings)], cache, 5.0)
        builder = InputBuilder(trained.schema, EXAMPLE.derived)
        scorer = Scorer(resolver, classifier, builder, EXAMPLE.model.answer, trained.threshold)
        scored, _ = await scorer.score(requests, timer)
        await store.close()
        return scored

    timer = StageTimer()
    return asyncio.run(scenario()), classifier.calls, timer.milliseconds()


def test_a_batch_is_one_round_trip_and_one_model_call(
    settings: Settings, redis_client: redis.Redis, trained: TrainResult, tmp_path: Path
) -> None:
    load_demo_data(settings.redis_url or "", 20, tmp_path)
    requests = [request(f"u{i:06d}", 10.0 * i, NOON) for i in range(20)]
    redis_client.config_resetstat()
    batch, calls, timing = score(settings, trained, requests)
    assert calls == [20]
    assert redis_client.info("commandstats")["cmdstat_hmget"]["calls"] == 20
    assert list(timing) == ["cache", "redis", "decode", "features", "derive", "inference"]
    singles = [score(settings, trained, [request])[0][0] for request in requests]
    assert [s["score"] for s in singles] == [b["score"] for b in batch]
    assert all(b["is_fraud"] == (b["score"] >= trained.threshold) for b in batch)
    assert {b["sources"]["features"] for b in batch} == {"redis"}


def test_only_results_a_fault_shaped_say_degraded_and_why(
    settings: Settings, redis_client: redis.Redis, trained: TrainResult, tmp_path: Path
) -> None:
    load_demo_data(settings.redis_url or "", 3, tmp_path)
    redis_client.delete("user:{u000001}:features")
    redis_client.set("user:{u000001}:features", "not a hash")
    requests = [request(f"u{i:06d}", 50.0, NOON) for i in range(3)] + [
        request("nobody", 50.0, NOON)
    ]
    batch, _, _ = score(settings, trained, requests)
    assert [(b["sources"]["features"], b.get("degraded")) for b in batch] == [
        ("redis", None),
        ("unavailable", {"features": "bad_value"}),
        ("redis", None),
        ("default", None),
    ]
