"""Scoring, independent of HTTP: resolve features, derive, run the model, time each stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import sklearn

from features.resolver import ResolvedBatch, ResolvedGroup, Resolver
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

    @property
    def threshold(self) -> float:
        """Scores at or above this are flagged as fraud."""
        return self._threshold

    async def score(
        self, requests: Sequence[ScoreRequest], timer: StageTimer
    ) -> tuple[list[ScoredRequest], ResolvedBatch]:
        """Score every request; also return the resolved features, for metrics."""
        with timer.stage("features"):
            resolved = await self._resolver.resolve_batch(
                [request.entity_id for request in requests], self._selection, timer
            )
        with timer.stage("derive"):
            inputs = self._inputs(requests, resolved)
        # Inputs are finite by construction (validated amounts, decoded or default features),
        # so scikit-learn's finiteness scan is skipped when the model runs in scikit-learn
        # (models.compiled_trees.fastest_classifier's fallback).
        with timer.stage("inference"), sklearn.config_context(assume_finite=True):
            scores = self._classifier.predict_proba(inputs)[:, 1].tolist()
        threshold = self._threshold
        groups = resolved.groups
        sources = [
            {group.group.name: source.value for group, source in zip(groups, row, strict=True)}
            for row in zip(*(group.sources for group in groups), strict=True)
        ]
        return [
            ScoredRequest(
                request.entity_id, score, score >= threshold, row_sources, _stale_ages(groups, row)
            )
            for row, (request, score, row_sources) in enumerate(
                zip(requests, scores, sources, strict=True)
            )
        ], resolved

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


def _stale_ages(groups: Sequence[ResolvedGroup], row: int) -> dict[str, float]:
    """For the groups of entity ``row`` served stale: their age in seconds."""
    return {
        group.group.name: round(age_s, 3)
        for group in groups
        if (age_s := group.stale_ages_s[row]) is not None
    }
