"""The response bodies of the scoring endpoints, as pydantic types.

Declaring them lets BentoML publish their schema in OpenAPI and serialize
them with pydantic-core's JSON encoder instead of ``model_dump()`` plus
``json.dumps``, which it uses for a plain ``dict``.  A batch's results are
``ScoreResult`` ``TypedDict``s, not models: pydantic-core validates 100 of
them in about half the time it takes to build 100 model instances (in
process, this machine).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.scoring import DegradedGroups, IsFraud, Score, ScoreResult, Sources, StaleAges

__all__ = ["BatchScoreResponse", "ScoreResponse"]

TimingMs = Annotated[
    dict[str, float], Field(description="Milliseconds per stage, as in Server-Timing.")
]


def _absent(value: object) -> bool:
    return value is None


class ScoreResponse(BaseModel):
    """``/score``: one ``ScoreResult``'s fields, the threshold and the per-stage timing."""

    entity_id: str
    score: Score
    is_fraud: IsFraud
    sources: Sources
    stale_age_s: StaleAges | None = Field(default=None, exclude_if=_absent)
    degraded: DegradedGroups | None = Field(default=None, exclude_if=_absent)
    threshold: float
    timing_ms: TimingMs


class BatchScoreResponse(BaseModel):
    """``/score_batch``: one result per request, in request order."""

    threshold: float
    results: list[ScoreResult]
    timing_ms: TimingMs
