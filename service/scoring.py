"""Scoring, independent of HTTP: resolve features, derive, run the model, time each stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import sklearn
from pydantic import Field

from features.project import Answer, ClassProbability
from features.serving.resolver import ResolvedBatch, ResolvedGroup, Resolver
from features.sources import Degraded, Source
from features.timing import Stage, StageTimer
from models.schema import InputBuilder

__all__ = [
    "Classifier",
    "DegradedGroups",
    "Regressor",
    "ScoreRequest",
    "ScoreResult",
    "Scorer",
    "Sources",
    "StaleAges",
]


class Classifier(Protocol):
    """What the service needs of a trained scikit-learn classifier."""

    def predict_proba(self, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Class probabilities, one row per input row."""
        ...


class Regressor(Protocol):
    """What the service needs of a trained scikit-learn regressor."""

    def predict(self, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """One prediction per input row."""
        ...


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One request to score: the entity and the request inputs by name (defaults filled)."""

    entity_id: str
    inputs: Mapping[str, Any]


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


ScoreResult = dict[str, Any]
"""The model's answer for one request, as the HTTP API answers it: a plain dict, so a batch
of 100 builds no other object per result.  Its keys: the project's entity field, ``score``,
a classifier's label, ``sources``, and ``stale_age_s``/``degraded`` only when they apply;
``service.responses`` declares them per project."""


class Scorer:
    """Scores requests with one store round trip and one model call per batch.

    A ``ClassProbability`` answer scores ``predict_proba``'s positive column and adds the
    label (score at or above the threshold) under its name; a ``RegressionValue`` scores
    ``predict``.  Each result names its entity under ``entity_field``.
    """

    def __init__(
        self,
        resolver: Resolver,
        model: Classifier | Regressor,
        builder: InputBuilder,
        answer: Answer,
        threshold: float | None,
        entity_field: str = "entity_id",
    ) -> None:
        self._resolver = resolver
        self._model = model
        self._builder = builder
        self._answer = answer
        self._threshold = threshold
        self._entity_field = entity_field
        schema = builder.schema
        self._selection = resolver.selection(schema.entity_type, schema.groups)

    @property
    def threshold(self) -> float | None:
        """A classifier's threshold (scores at or above it get the label); else ``None``."""
        return self._threshold

    def _predict(self, inputs: npt.NDArray[np.float64]) -> list[float]:
        if isinstance(self._answer, ClassProbability):
            model = cast(Classifier, self._model)
            scores: list[float] = model.predict_proba(inputs)[:, self._answer.positive].tolist()
            return scores
        return [float(value) for value in cast(Regressor, self._model).predict(inputs)]

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
            scores = self._predict(inputs)
        groups = resolved.groups
        sources = [
            {group.group.name: source.value for group, source in zip(groups, row, strict=True)}
            for row in zip(*(group.sources for group in groups), strict=True)
        ]
        entity_field = self._entity_field
        results: list[ScoreResult] = [
            {entity_field: request.entity_id, "score": score, "sources": row_sources}
            for request, score, row_sources in zip(requests, scores, sources, strict=True)
        ]
        threshold = self._threshold
        if isinstance(self._answer, ClassProbability) and threshold is not None:
            label = self._answer.label
            for result, score in zip(results, scores, strict=True):
                result[label] = score >= threshold
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
            values: dict[str, Any] = {}
            for group in resolved.groups:
                values.update(zip(group.fields, group.values[0], strict=True))
            values.update(requests[0].inputs)
            return self._builder.row(values)
        columns: dict[str, Any] = {}
        for group in resolved.groups:
            columns.update(group.columns())
        for name in requests[0].inputs:
            columns[name] = [request.inputs[name] for request in requests]
        return self._builder.matrix(columns, len(requests))


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
