"""The response bodies of the scoring endpoints, as pydantic types.

Declaring them lets BentoML publish their schema in OpenAPI and serialize
them with pydantic-core's JSON encoder instead of ``model_dump()`` plus
``json.dumps``, which it uses for a plain ``dict``.  Every field of a scored
transaction is declared once, in ``service.scoring.ScoreResult``, a
``TypedDict``: a batch's results stay plain dicts (pydantic-core validates
100 of them in about half the time it takes to build 100 model instances),
and ``/score``'s body extends the same ``TypedDict``.  Each body is the root
of a ``RootModel``, so BentoML sees a model and serializes it directly, and a
``NotRequired`` field that is absent stays out of the JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import Field, GetJsonSchemaHandler, RootModel
from pydantic_core import CoreSchema
from typing_extensions import TypedDict

from service.scoring import ScoreResult

__all__ = ["BatchScoreResponse", "ScoreResponse"]

Threshold = Annotated[
    float, Field(description="Scores at or above this are flagged as fraud (is_fraud).")
]
TimingMs = Annotated[
    dict[str, float], Field(description="Milliseconds per stage, as in Server-Timing.")
]


class ScoreBody(ScoreResult):
    """One transaction's score, where its features came from, the threshold and the time
    of each stage."""

    threshold: Threshold
    timing_ms: TimingMs


class BatchScoreBody(TypedDict):
    """One result per transaction, in request order, the threshold and the time of each
    stage."""

    threshold: Threshold
    results: list[ScoreResult]
    timing_ms: TimingMs


BodyT = TypeVar("BodyT")


class _Body(RootModel[BodyT]):
    """A response whose JSON is its root ``TypedDict``."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        # The root's own schema, not a reference to it: BentoML publishes a model's schema
        # as an OpenAPI component, which cannot be a bare reference.
        return handler.resolve_ref_schema(handler(core_schema))


class ScoreResponse(_Body[ScoreBody]):
    """The ``/score`` response."""


class BatchScoreResponse(_Body[BatchScoreBody]):
    """The ``/score_batch`` response."""
