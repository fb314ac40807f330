"""The response bodies of the scoring endpoints, generated from the project at start-up.

Declaring them lets BentoML publish their schema in OpenAPI and serialize
them with pydantic-core's JSON encoder instead of ``model_dump()`` plus
``json.dumps``, which it uses for a plain ``dict``.  The fields of a scored
request are declared once per project, in a ``TypedDict`` whose keys follow
the declarations (the entity field, ``score``, a classifier's label, where
the features came from): a batch's results stay plain dicts (pydantic-core
validates 100 of them in about half the time it takes to build 100 model
instances), and ``/score``'s body extends the same fields.  Each body is the
root of a ``RootModel``, so BentoML sees a model and serializes it directly,
and a ``NotRequired`` field that is absent stays out of the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, TypeVar

from pydantic import Field, GetJsonSchemaHandler, RootModel
from pydantic_core import CoreSchema
from typing_extensions import TypedDict

from features.project import ClassProbability, Project
from service.scoring import DegradedGroups, Sources, StaleAges

__all__ = ["ResponseModels", "response_models"]

TimingMs = Annotated[
    dict[str, float], Field(description="Milliseconds per stage, as in Server-Timing.")
]

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


@dataclass(frozen=True)
class ResponseModels:
    """The ``/score`` and ``/score_batch`` responses of one project."""

    score: type[RootModel[Any]]
    score_batch: type[RootModel[Any]]


def response_models(project: Project) -> ResponseModels:
    """Generate the response bodies of ``project``'s scoring endpoints."""
    answer = project.model.answer
    entity = project.entity.name
    name = "".join(part.capitalize() for part in project.name.split("_"))
    scores: dict[str, Any] = {
        "score": Annotated[float, Field(description=answer.score_description)],
    }
    extra: dict[str, Any] = {}
    if isinstance(answer, ClassProbability):
        scores[answer.label] = Annotated[bool, Field(description=answer.label_description)]
        extra["threshold"] = Annotated[
            float,
            Field(description=f"Scores at or above this set {answer.label} to true."),
        ]
    provenance = {
        "sources": Sources,
        "stale_age_s": NotRequired[StaleAges],
        "degraded": NotRequired[DegradedGroups],
    }
    result: dict[str, Any] = {
        project.entity_field: Annotated[str, Field(description=f"The {entity} scored.")],
    }
    for named in project.request_entities:
        if named.candidates:
            candidate = _typed_dict(
                f"{name}Candidate",
                {
                    named.answer_field: Annotated[
                        str, Field(description=f"The {named.entity.name} scored.")
                    ],
                    **scores,
                    **provenance,
                },
            )
            result[named.field] = Annotated[
                list[candidate],  # type: ignore[valid-type]
                Field(
                    description="One score per candidate, in request order (with top_k: the "
                    "best top_k, best first); sources name groups entity:group."
                ),
            ]
        else:
            result[named.field] = Annotated[
                str, Field(description=f"The {named.entity.name} the request named.")
            ]
    if project.candidates is None:
        result |= scores
    result |= provenance
    result_type = _typed_dict(f"{name}ScoreResult", result)
    score_body = _typed_dict(f"{name}ScoreBody", {**result, **extra, "timing_ms": TimingMs})
    results = list.__class_getitem__(result_type)
    batch_body = _typed_dict(
        f"{name}BatchScoreBody", {**extra, "results": results, "timing_ms": TimingMs}
    )
    score = _body(f"{name}ScoreResponse", score_body, f"One {entity}'s score, its sources, timing.")
    score_batch = _body(
        f"{name}BatchScoreResponse", batch_body, "One result per request, in request order."
    )
    return ResponseModels(score, score_batch)


def _body(name: str, root: Any, doc: str) -> type[RootModel[Any]]:
    """A ``_Body`` subclass whose root is ``root``, named for the OpenAPI page."""
    parametrized: type[RootModel[Any]] = _Body.__class_getitem__(root)  # type: ignore[assignment]
    return type(name, (parametrized,), {"__doc__": doc})


def _typed_dict(name: str, fields: dict[str, Any]) -> Any:
    """A ``TypedDict`` class made at run time (its keys come from the project)."""
    return TypedDict(name, fields)  # type: ignore[operator]
