"""Scoring, independent of HTTP: resolve features, derive, run the model, time each stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, Protocol

import numpy as np
import numpy.typing as npt
import sklearn
from pydantic import Field
from typing_extensions import TypedDict

from features.serving.resolver import ResolvedBatch, ResolvedGroup, Resolver
from features.sources import Degraded, Source
from features.timing import Stage, StageTimer
from models.schema import ModelSchema, build_matrix, build_row

__all__ = ["Classifier", "ScoreRequest", "ScoreResult", "Scorer"]


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


Score = Annotated[float, Field(description="Probability of fraud, 0 to 1.")]
IsFraud = Annotated[bool, Field(description="True when the score is at or above the threshold.")]
Sources = Annotated[
    dict[str, str],
    Field(
        description=f"Per feature group, where its values came from: {', '.join(Source)}.",
        json_schema_extra={"additionalProperties": {"type": "string", "enum": list(Source)}},
    ),
]
StaleAges = Annotated[
    dict[str, float],
    Field(description="Only when some group was served stale: how old its values are, seconds."),
]
DegradedGroups = Annotated[
    dict[str, str],
    Field(
        description="Only when a fault shaped some group's answer (stale, unavailable, or backing "
        f"because Redis failed): per such group, why ({', '.join(Degraded)}).",
        json_schema_extra={"additionalProperties": {"type": "string", "enum": list(Degraded)}},
    ),
]


# A plain dict, as the HTTP API answers it: a batch of 100 builds no other object per result.
# Its fields are declared here only; service.responses builds the response bodies on it.
class ScoreResult(TypedDict):
    """The model's answer for one transaction, and where its features came from."""

    entity_id: str
    score: Score
    is_fraud: IsFraud
    sources: Sources
    stale_age_s: NotRequired[StaleAges]
    degraded: NotRequired[DegradedGroups]


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

    @property
    def threshold(self) -> float:
        """Scores at or above this are flagged as fraud."""
        return self._threshold

    async def score(
        self, requests: Sequence[ScoreRequest], timer: StageTimer
    ) -> tuple[list[ScoreResult], ResolvedBatch]:
        """Score every request; also return the resolved features, for metrics."""
        with timer.stage(Stage.FEATURES):
            resolved = await self._resolver.resolve_batch(
                [request.entity_id for request in requests], self._selection, timer
            )
        with timer.stage(Stage.DERIVE):
            inputs = self._inputs(requests, resolved)
        # Inputs are finite by construction (validated amounts, decoded or default features),
        # so scikit-learn's finiteness scan is skipped when the model runs in scikit-learn
        # (models.compiled_trees.fastest_classifier's fallback).
        with timer.stage(Stage.INFERENCE), sklearn.config_context(assume_finite=True):
            scores = self._classifier.predict_proba(inputs)[:, 1].tolist()
        threshold = self._threshold
        groups = resolved.groups
        sources = [
            {group.group.name: source.value for group, source in zip(groups, row, strict=True)}
            for row in zip(*(group.sources for group in groups), strict=True)
        ]
        results: list[ScoreResult] = [
            {
                "entity_id": request.entity_id,
                "score": score,
                "is_fraud": score >= threshold,
                "sources": row_sources,
            }
            for request, score, row_sources in zip(requests, scores, sources, strict=True)
        ]
        for group in groups:
            if group.stale_ages_s.count(None) < len(group.stale_ages_s):
                _add_stale_ages(results, group)
            if group.degraded.count(None) < len(group.degraded):
                _add_degraded(results, group)
        return results, resolved

    def _inputs(
        self, requests: Sequence[ScoreRequest], resolved: ResolvedBatch
    ) -> npt.NDArray[np.float64]:
        if len(requests) == 1:
            request = requests[0]
            stored: dict[str, Any] = {}
            for group in resolved.groups:
                stored.update(zip(group.fields, group.values[0], strict=True))
            return build_row(self._schema, stored, request.amount, request.timestamp)
        columns: dict[str, tuple[Any, ...]] = {}
        for group in resolved.groups:
            columns.update(group.columns())
        return build_matrix(
            self._schema,
            columns,
            [request.amount for request in requests],
            [request.timestamp for request in requests],
        )


def _add_degraded(results: list[ScoreResult], group: ResolvedGroup) -> None:
    """Record, for each result whose ``group`` a fault shaped, why."""
    for result, reason in zip(results, group.degraded, strict=True):
        if reason is not None:
            result.setdefault("degraded", {})[group.group.name] = reason.value


def _add_stale_ages(results: list[ScoreResult], group: ResolvedGroup) -> None:
    """Record, for each result whose ``group`` was served stale, how old its values are."""
    for result, age_s in zip(results, group.stale_ages_s, strict=True):
        if age_s is not None:
            result.setdefault("stale_age_s", {})[group.group.name] = round(age_s, 3)
