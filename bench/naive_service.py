"""The design the mission replaces: one Redis round trip per entity and feature group.

Usage: ``REDIS_URL=redis://... bentoml serve bench.naive_service:NaiveScorer``

Same API shape (the example project's), model, derived features and fixes
(request-timeout patch, ``gc.freeze()``) as ``ScoringService``, but features are fetched the obvious
way: for each entity, for each group the model reads, ``await HGETALL`` in
turn, with no pipeline, cache, deadline or breaker.  ``bench.http_bench``
measures it against the real service.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import bentoml
import numpy as np
import redis.asyncio
import sklearn

from features.keys import feature_key
from models.schema import InputBuilder
from models.train import default_model_name, load
from service.bentoml_adapter import install_adaptations
from service.harness.example import EXAMPLE, EXAMPLE_REGISTRY
from service.inputs import request_models

__all__ = ["NaiveScorer"]

install_adaptations(edge=[])

_REQUESTS = request_models(EXAMPLE, 256)


@bentoml.service(logging={"access": {"enabled": False}})
class NaiveScorer:
    """Scores transactions, fetching features with sequential awaits."""

    model_ref = bentoml.models.BentoModel(
        os.environ.get("FEATSERVE_MODEL_TAG", f"{default_model_name(EXAMPLE)}:latest")
    )

    def __init__(self) -> None:
        model = load(self.model_ref.tag)
        self.estimator = model.estimator
        self.builder = InputBuilder(model.schema, EXAMPLE.derived)
        self.threshold = model.threshold or 0.5
        self.groups = [EXAMPLE_REGISTRY.group("user", name) for name in model.schema.groups]
        self.client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])

    @bentoml.on_startup
    def freeze_startup_objects(self) -> None:
        """Freeze start-up objects, as the product service does."""
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    async def close_client(self) -> None:
        """Close the Redis connections."""
        await self.client.aclose()

    async def _stored(self, entity_id: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for group in self.groups:
            raw = await self.client.hgetall(feature_key("user", entity_id, group.name))
            for feature in group.features:
                held = raw.get(feature.name.encode())
                values[feature.name] = (
                    feature.default if held is None else feature.dtype.decode(held, feature.dim)
                )
        return values

    async def _score(self, items: list[tuple[str, float, int]]) -> list[float]:
        rows = [
            self.builder.row(
                {**await self._stored(entity_id), "amount": amount, "timestamp": timestamp}
            )
            for entity_id, amount, timestamp in items
        ]
        with sklearn.config_context(assume_finite=True):
            return [float(p) for p in self.estimator.predict_proba(np.vstack(rows))[:, 1]]

    @bentoml.api(input_spec=_REQUESTS.score)
    async def score(
        self, entity_id: str, amount: float, timestamp: int | None = None
    ) -> dict[str, Any]:
        """Score one transaction."""
        [score] = await self._score([(entity_id, amount, timestamp or int(time.time()))])
        return {"entity_id": entity_id, "score": score, "is_fraud": score >= self.threshold}

    @bentoml.api(input_spec=_REQUESTS.score_batch)
    async def score_batch(self, requests: list[Any]) -> dict[str, Any]:
        """Score many transactions, one entity after another."""
        now = int(time.time())
        scores = await self._score([(r.entity_id, r.amount, r.timestamp or now) for r in requests])
        return {
            "threshold": self.threshold,
            "results": [
                {"entity_id": r.entity_id, "score": s, "is_fraud": s >= self.threshold}
                for r, s in zip(requests, scores, strict=True)
            ],
        }
