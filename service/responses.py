"""The response bodies of the scoring endpoints, as pydantic models.

Declaring them lets BentoML publish their schema in OpenAPI and serialize
them with pydantic-core's JSON encoder: for a batch of 100 results that takes
about half the time of the ``model_dump()`` plus ``json.dumps`` BentoML uses
for a plain ``dict`` return (in process, this machine).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BatchScoreResponse", "ScoreResponse", "ScoreResult"]


def _absent(value: object) -> bool:
    return value is None


class ScoreResult(BaseModel):
    """The model's answer for one transaction and where its features came from."""

    entity_id: str
    score: float = Field(description="Probability of fraud, 0 to 1.")
    is_fraud: bool = Field(description="True when the score is at or above the threshold.")
    sources: dict[str, str] = Field(
        description="Per feature group: cache, redis, backing, stale or default."
    )
    stale_age_s: dict[str, float] | None = Field(
        default=None,
        exclude_if=_absent,
        description="Only when some group was served stale: how old its values are, seconds.",
    )


class ScoreResponse(ScoreResult):
    """``/score``: one result, the threshold and the per-stage timing."""

    threshold: float
    timing_ms: dict[str, float] = Field(description="Milliseconds per stage, as Server-Timing.")


class BatchScoreResponse(BaseModel):
    """``/score_batch``: one result per request, in request order."""

    threshold: float
    results: list[ScoreResult]
    timing_ms: dict[str, float] = Field(description="Milliseconds per stage, as Server-Timing.")
