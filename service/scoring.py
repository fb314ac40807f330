"""Scoring, independent of HTTP: resolve features, derive, run the model, time each stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import sklearn
from pydantic import Field
from sklearn.base import BaseEstimator

from features.project import Answer, ClassProbability, RequestEntity
from features.serving.resolver import ResolvedBatch, ResolvedGroup, Resolver, Selection
from features.sources import Degraded, Source
from features.timing import Stage, StageTimer
from models.schema import InputBuilder

__all__ = [
    "Classifier",
    "DegradedGroups",
    "Regressor",
    "Resolution",
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
    related: tuple[str | tuple[str, ...], ...] = ()
    """The ids of the project's request entities, in their declared order: one id, or a
    tuple of candidate ids."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """What scoring read: the scored entities' groups and each request entity's."""

    scored: ResolvedBatch
    related: tuple[ResolvedBatch, ...] = ()
    """One part per request entity, in declared order (a candidates part holds every
    request's candidates, one after the other)."""
    degraded: tuple[Degraded | None, ...] | None = None
    """With request entities: per request, the first reason a fault shaped any group of
    any of its entities (``None``: none did); without them, ``None``."""


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


_SOURCE_VALUES = {source: source.value for source in Source}
"""Each source's name in answers: a dict lookup is cheaper than an enum's ``.value``."""


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
        request_entities: Sequence[RequestEntity] = (),
    ) -> None:
        self._resolver = resolver
        self._model = model
        self._in_sklearn = isinstance(model, BaseEstimator)
        self._builder = builder
        self._answer = answer
        self._threshold = threshold
        self._entity_field = entity_field
        schema = builder.schema
        groups = schema.groups_by_entity()
        self._selection = resolver.selection(schema.entity_type, groups[schema.entity_type])
        self._related = tuple(request_entities)
        self._related_selections: tuple[Selection, ...] = tuple(
            resolver.selection(item.entity.name, groups.get(item.entity.name, ()))
            for item in self._related
        )

    @property
    def threshold(self) -> float | None:
        """A classifier's threshold (scores at or above it get the label); else ``None``."""
        return self._threshold

    def _predict(self, inputs: npt.NDArray[np.float64]) -> list[float]:
        # Inputs are finite by construction (validated amounts, decoded or default features),
        # so scikit-learn's finiteness scan is skipped when the model runs in scikit-learn
        # (models.compiled_trees.fastest_classifier's fallback, a regressor); compiled trees
        # never scan, and setting scikit-learn's configuration costs microseconds a call.
        if self._in_sklearn:
            with sklearn.config_context(assume_finite=True):
                return self._predict_now(inputs)
        return self._predict_now(inputs)

    def _predict_now(self, inputs: npt.NDArray[np.float64]) -> list[float]:
        if isinstance(self._answer, ClassProbability):
            model = cast(Classifier, self._model)
            scores: list[float] = model.predict_proba(inputs)[:, self._answer.positive].tolist()
            return scores
        return [float(value) for value in cast(Regressor, self._model).predict(inputs)]

    async def score(
        self, requests: Sequence[ScoreRequest], timer: StageTimer
    ) -> tuple[list[ScoreResult], Resolution]:
        """Score every request; also return the resolved features, for metrics."""
        if self._related:
            return await self._score_related(requests, timer)
        with timer.stage(Stage.FEATURES):
            resolved = await self._resolver.resolve_batch(
                [request.entity_id for request in requests], self._selection, timer
            )
        with timer.stage(Stage.DERIVE):
            inputs = self._inputs(requests, resolved)
        with timer.stage(Stage.INFERENCE):
            scores = self._predict(inputs)
        groups = resolved.groups
        names = tuple(group.group.name for group in groups)
        value_of = _SOURCE_VALUES.__getitem__
        sources = [
            dict(zip(names, row, strict=True))
            for row in zip(*(map(value_of, group.sources) for group in groups), strict=True)
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
        return results, Resolution(resolved)

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

    async def _score_related(
        self, requests: Sequence[ScoreRequest], timer: StageTimer
    ) -> tuple[list[ScoreResult], Resolution]:
        """Score requests that name request entities: every entity's groups in one round
        trip; one model row per candidate (or per request when none holds candidates)."""
        ids: list[list[str]] = [[] for _ in self._related]
        counts = [1] * len(requests)
        for row, request in enumerate(requests):
            for position, named in enumerate(request.related):
                if isinstance(named, tuple):
                    ids[position].extend(named)
                    counts[row] = len(named)
                else:
                    ids[position].append(named)
        with timer.stage(Stage.FEATURES):
            scored, *others = await self._resolver.resolve_parts(
                [
                    ([request.entity_id for request in requests], self._selection),
                    *zip(ids, self._related_selections, strict=True),
                ],
                timer,
            )
        with timer.stage(Stage.DERIVE):
            repeats = np.asarray(counts)
            n_rows = int(repeats.sum())
            columns: dict[str, Any] = {}
            for resolved, item in zip((scored, *others), (None, *self._related), strict=True):
                for group in resolved.groups:
                    for name, column in group.columns().items():
                        values = np.asarray(column)
                        columns[name] = (
                            values
                            if item is not None and item.candidates
                            else np.repeat(values, repeats)
                        )
            for name in requests[0].inputs if requests else ():
                values = np.asarray([request.inputs[name] for request in requests])
                columns[name] = np.repeat(values, repeats)
            inputs = self._builder.matrix(columns, n_rows)
        with timer.stage(Stage.INFERENCE):
            scores = self._predict(inputs) if n_rows else []
        results = self._related_results(requests, scored, others, scores)
        return results, Resolution(scored, tuple(others), tuple(map(_first_reason, results)))

    def _related_results(
        self,
        requests: Sequence[ScoreRequest],
        scored: ResolvedBatch,
        others: Sequence[ResolvedBatch],
        scores: list[float],
    ) -> list[ScoreResult]:
        """One result per request: its entities' sources, and its score, or, with
        candidates, one score per candidate in request order."""
        label = self._answer.label if isinstance(self._answer, ClassProbability) else None
        threshold = self._threshold if label is not None else None
        results: list[ScoreResult] = [
            {self._entity_field: request.entity_id} for request in requests
        ]
        _describe_groups(results, scored.groups, qualified=False)
        candidates_at = None
        for position, (item, part) in enumerate(zip(self._related, others, strict=True)):
            if item.candidates:
                candidates_at = position
                continue
            for result, request in zip(results, requests, strict=True):
                result[item.field] = request.related[position]
            _describe_groups(results, part.groups, qualified=True)
        if candidates_at is None:
            for result, score in zip(results, scores, strict=True):
                _add_score(result, score, label, threshold)
            return results
        item = self._related[candidates_at]
        part = others[candidates_at]
        answers: list[ScoreResult] = [
            {item.answer_field: candidate} for candidate in part.entity_ids
        ]
        _describe_groups(answers, part.groups, qualified=True)
        start = 0
        for result, request in zip(results, requests, strict=True):
            end = start + len(request.related[candidates_at])
            for answer, score in zip(answers[start:end], scores[start:end], strict=True):
                _add_score(answer, score, label, threshold)
            result[item.field] = answers[start:end]
            start = end
        return results


def _first_reason(result: ScoreResult) -> Degraded | None:
    """The first reason a fault shaped a related request's answer, its candidates' included."""
    found: dict[str, str] = result.get("degraded") or next(
        (
            answer["degraded"]
            for value in result.values()
            if type(value) is list
            for answer in value
            if "degraded" in answer
        ),
        {},
    )
    return Degraded(next(iter(found.values()))) if found else None


def _add_score(
    result: ScoreResult, score: float, label: str | None, threshold: float | None
) -> None:
    result["score"] = score
    if label is not None and threshold is not None:
        result[label] = score >= threshold


def _describe_groups(
    results: list[ScoreResult], groups: Sequence[ResolvedGroup], qualified: bool
) -> None:
    """Add each group's source to each result (``sources``), and its stale age and
    degraded reason when it has one; ``qualified`` names groups ``entity:group``."""
    for group in groups:
        name = f"{group.group.entity.name}:{group.group.name}" if qualified else group.group.name
        for result, source in zip(results, group.sources, strict=True):
            result.setdefault("sources", {})[name] = source.value
        for result, age_s in zip(results, group.stale_ages_s, strict=True):
            if age_s is not None:
                result.setdefault("stale_age_s", {})[name] = round(age_s, 3)
        for result, reason in zip(results, group.degraded, strict=True):
            if reason is not None:
                result.setdefault("degraded", {})[name] = reason.value


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
