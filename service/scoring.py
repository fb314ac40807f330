"""Scoring, independent of HTTP: resolve features, derive, run the model, time each stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import sklearn

from features.resolver import EntityFeatures, Resolver
from features.timing import StageTimer
from models.schema import ModelSchema, build_matrix, build_row

__all__ = ["Classifier", "ScoreRequest", "ScoredRequest", "Scorer"]


class Classifier(Protocol):
    """What the service needs of a trained scikit-learn classifier."""

    def predict_proba(self, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Class probabilities, one row per input row."""
        ...


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One transaction to score."""

    entity_id: str
    amount: float
    timestamp: int


@dataclass(frozen=True, slots=True)
class ScoredRequest:
    """The model's answer for one transaction, and where its features came from."""

    entity_id: str
    score: float
    is_fraud: bool
    sources: dict[str, str]
    stale_age_s: dict[str, float]
    """For groups served stale: how old their values are."""


class Scorer:
    """Scores requests with one store round trip and one model call per batch."""

    def __init__(
        self, resolver: Resolver, classifier: Classifier, schema: ModelSchema, threshold: float
    ) -> None:
        self._resolver = resolver
        self._classifier = classifier
        self._schema = schema
        self._threshold = threshold
        self._selection = resolver.selection(schema.entity_type, schema.groups)
        self._stored_names = tuple(spec.name for spec in schema.inputs if spec.source == "stored")

    @property
    def threshold(self) -> float:
        """Scores at or above this are flagged as fraud."""
        return self._threshold

    async def score(
        self, requests: Sequence[ScoreRequest], timer: StageTimer
    ) -> tuple[list[ScoredRequest], list[EntityFeatures]]:
        """Score every request; also return the resolved features, for metrics."""
        with timer.stage("features"):
            entities = await self._resolver.resolve(
                [request.entity_id for request in requests], self._selection, timer
            )
        with timer.stage("derive"):
            stored = [_merged(entity) for entity in entities]
            inputs = self._inputs(requests, stored)
        # Inputs are finite by construction (validated amounts, decoded or default features),
        # so scikit-learn's finiteness scan is skipped when the model runs in scikit-learn
        # (models.compiled_trees.fastest_classifier's fallback).
        with timer.stage("inference"), sklearn.config_context(assume_finite=True):
            scores = self._classifier.predict_proba(inputs)[:, 1]
        return [
            ScoredRequest(
                entity.entity_id,
                float(score),
                bool(score >= self._threshold),
                {g: r.source.value for g, r in entity.groups.items()},
                {g: round(r.age_s, 3) for g, r in entity.groups.items() if r.age_s is not None},
            )
            for entity, score in zip(entities, scores, strict=True)
        ], entities

    def _inputs(
        self, requests: Sequence[ScoreRequest], stored: list[Mapping[str, Any]]
    ) -> npt.NDArray[np.float64]:
        if len(requests) == 1:
            request = requests[0]
            return build_row(self._schema, stored[0], request.amount, request.timestamp)
        columns = {name: [row[name] for row in stored] for name in self._stored_names}
        return build_matrix(
            self._schema,
            columns,
            [request.amount for request in requests],
            [request.timestamp for request in requests],
        )


def _merged(entity: EntityFeatures) -> Mapping[str, Any]:
    """One mapping of every stored value of an entity, across its groups."""
    groups = list(entity.groups.values())
    if len(groups) == 1:
        return groups[0].values
    merged: dict[str, Any] = {}
    for group in groups:
        merged.update(group.values)
    return merged
