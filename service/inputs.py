"""The request bodies of the HTTP API, generated from the project at start-up.

``request_models(project, batch_max)`` builds the pydantic models of the four
endpoints' bodies from the declarations: the field naming the scored entity,
each request input with its type, bounds, default and example, the entity's
feature groups and features.  pydantic validates a body before any work is
done, and the OpenAPI page shows the project's own names.

Unknown keys are refused at every level of every body (``UNKNOWN_KEYS_RULE``):
the top level of each endpoint's body, each batch item and each update;
feature names in a push's ``values`` are checked against the group by
``parse_update``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictFloat,
    StrictInt,
    create_model,
)

from features.errors import RegistryError
from features.ingest.updates import MAX_EVENT_TIMESTAMP
from features.keys import ENTITY_ID_MAX_LENGTH, ENTITY_ID_PATTERN, validate_entity_id
from features.project import Project, RequestEntity, RequestInput
from features.registry import Registry
from features.stores.codecs import codec_of

__all__ = ["TOP_K", "UNKNOWN_KEYS_RULE", "EntityId", "RequestModels", "request_models"]

TOP_K = "top_k"
"""The optional field of a request with candidates that keeps only the best ones."""

UNKNOWN_KEYS_RULE = ConfigDict(extra="forbid")
"""The one rule for keys a body's model does not declare: refused, naming the key's place."""

_ITEM_RULES = ConfigDict(**UNKNOWN_KEYS_RULE, frozen=True)

EntityId = Annotated[
    str,
    AfterValidator(validate_entity_id),
    Field(
        description="1-128 printable Unicode characters in normal form NFC, without "
        "whitespace or braces (no control, invisible or default-ignorable characters, no "
        "combining mark first).",
        json_schema_extra={"pattern": ENTITY_ID_PATTERN},
    ),
]
"""An entity id; a bad one is refused with the reason ``validate_entity_id`` gives."""


@dataclass(frozen=True)
class RequestModels:
    """The body of each endpoint, for one project."""

    score: type[BaseModel]
    """``/score``: the entity field and the request inputs."""
    score_item: type[BaseModel]
    """One item of ``/score_batch`` (unknown fields refused)."""
    score_batch: type[BaseModel]
    """``/score_batch``: ``requests``, a list of items."""
    features: type[BaseModel]
    """``/features``: ``entity_ids`` and, optionally, ``groups``."""
    push: type[BaseModel]
    """``/push``: ``updates``, each one entity's values of one group."""


def request_models(project: Project, batch_max: int) -> RequestModels:
    """Generate the request bodies of ``project``'s API; ``batch_max`` bounds every list."""
    entity = project.entity.name
    example_id = Field(examples=[_example_id(project.entity.name)])
    fields: dict[str, Any] = {project.entity_field: (Annotated[EntityId, example_id], ...)}
    for named in project.request_entities:
        fields[named.field] = _entity_field(named)
    if project.candidates is not None:
        fields[TOP_K] = _top_k_field(project.candidates)
    for item in project.request:
        fields[item.name] = _request_field(item)
    title = _class_name(project.name)
    score = create_model(f"{title}ScoreRequest", __config__=UNKNOWN_KEYS_RULE, **fields)
    score_item = create_model(
        f"{title}ScoreInput",
        __config__=_ITEM_RULES,
        __doc__=f"One {entity} to score.",
        **fields,
    )
    batch = Annotated[list[score_item], Field(min_length=1, max_length=batch_max)]  # type: ignore[valid-type]
    score_batch = create_model(
        f"{title}ScoreBatchRequest", __config__=UNKNOWN_KEYS_RULE, requests=(batch, ...)
    )
    group_names = tuple(group.name for group in project.registry.groups_of(entity))
    ids = Annotated[
        list[Annotated[EntityId, example_id]], Field(min_length=1, max_length=batch_max)
    ]
    if project.request_entities:
        features = create_model(
            f"{title}FeaturesRequest",
            __config__=UNKNOWN_KEYS_RULE,
            entity_ids=(ids, ...),
            entity=(_entity_name(project), entity),
            groups=(_any_group_names(project) | None, None),
        )
    else:
        features = create_model(
            f"{title}FeaturesRequest",
            __config__=UNKNOWN_KEYS_RULE,
            entity_ids=(ids, ...),
            groups=(_group_names(project.registry, entity, group_names) | None, None),
        )
    update = _push_update(project, group_names)
    updates = Annotated[list[update], Field(min_length=1, max_length=batch_max)]  # type: ignore[valid-type]
    push = create_model(f"{title}PushRequest", __config__=UNKNOWN_KEYS_RULE, updates=(updates, ...))
    return RequestModels(score, score_item, score_batch, features, push)


def _entity_field(named: RequestEntity) -> tuple[Any, Any]:
    """The annotation of a request entity's field: one id, or a list of candidate ids."""
    example = _example_id(named.entity.name)
    description = named.description or None
    if not named.candidates:
        return Annotated[EntityId, Field(description=description, examples=[example])], ...
    candidates = Annotated[
        list[EntityId],
        Field(
            min_length=1,
            max_length=named.max_count,
            description=description,
            examples=[[example, _example_id(named.entity.name, 456)]],
        ),
    ]
    return candidates, ...


def _top_k_field(named: RequestEntity) -> tuple[Any, Any]:
    """The optional ``top_k`` of a request with candidates."""
    top_k = Annotated[
        int,
        Field(
            strict=True,
            ge=1,
            le=named.max_count,
            description=f"Answer only the best top_k {named.field}, best first; absent: "
            "every candidate, in request order.",
        ),
    ]
    return top_k | None, None


def _entity_name(project: Project) -> Any:
    """An entity of the project, by name (``/features`` and ``/push`` of related entities)."""
    names = [entity.name for entity in project.entities]
    return Annotated[
        str,
        Field(
            description="The entity the ids name; default: the scored one.",
            json_schema_extra={"enum": list[JsonValue](names)},
        ),
        AfterValidator(_one_of(names, "entity")),
    ]


def _any_group_names(project: Project) -> Any:
    """Feature groups of any entity of the project (checked against the entity named)."""
    names = sorted({group.name for group in project.groups})
    longest = max(len(project.registry.groups_of(entity.name)) for entity in project.entities)
    return Annotated[
        list[str],
        Field(
            min_length=1,
            max_length=longest,
            description="Feature groups of the entity; repeats are dropped.",
            json_schema_extra={"items": {"type": "string", "enum": list[JsonValue](names)}},
        ),
        AfterValidator(lambda chosen: list(dict.fromkeys(chosen))),
    ]


def _one_of(names: list[str], what: str) -> Any:
    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"unknown {what} {value!r} (known: {', '.join(names)})")
        return value

    return check


def _request_field(item: RequestInput) -> tuple[Any, Any]:
    """The annotation and default of one request input."""
    bounds: dict[str, Any] = {}
    if item.minimum is not None:
        bounds["ge"] = item.minimum
    if item.maximum is not None:
        bounds["le"] = item.maximum
    if item.type == "float":
        bounds["allow_inf_nan"] = False
    described = Field(
        strict=True,
        description=item.description or None,
        examples=None if item.example is None else [item.example],
        **bounds,
    )
    kind: Any = float if item.type == "float" else int
    if item.required:
        return Annotated[kind, described], ...
    # An absent optional input is None here; the service fills its default (a timestamp: now).
    return Annotated[kind, described] | None, None


def _group_names(registry: Registry, entity: str, group_names: tuple[str, ...]) -> Any:
    def known_groups(names: list[str]) -> list[str]:
        """``names`` without repeats, in order; ``ValueError`` naming the first unknown group."""
        unique = list(dict.fromkeys(names))
        for name in unique:
            try:
                registry.group(entity, name)
            except RegistryError as exc:
                raise ValueError(str(exc)) from None
        return unique

    return Annotated[
        list[str],
        # Bounded by the number of groups: a longer list repeats a name or names an unknown
        # one, and refusing it costs nothing, where resolving each repeat cost the event loop
        # dearly.
        Field(
            min_length=1,
            max_length=len(group_names),
            description=f"Feature groups of the {entity} entity; repeats are dropped.",
            json_schema_extra={"items": {"type": "string", "enum": list(group_names)}},
        ),
        AfterValidator(known_groups),
    ]


def _push_update(project: Project, group_names: tuple[str, ...]) -> type[BaseModel]:
    entity = project.entity.name
    first = project.registry.groups_of(entity)[0]
    example = {f.name: f.default for f in first.features[:2] if f.type_name in ("int", "float")}
    related: dict[str, Any] = {}
    if project.request_entities:
        # Any entity's group; parse_update's caller checks the pair.
        group_names = tuple(sorted({group.name for group in project.groups}))
        related["entity"] = (_entity_name(project), entity)
    return create_model(
        f"{_class_name(project.name)}PushUpdate",
        __config__=_ITEM_RULES,
        __doc__="New values of one entity's feature group, as of ``event_timestamp``.",
        **related,
        # Checked by parse_update (a refusal names the update's index); the schema says the
        # rules.
        entity_id=(
            str,
            Field(
                examples=[_example_id(project.entity.name)],
                json_schema_extra={
                    "pattern": ENTITY_ID_PATTERN,
                    "minLength": 1,
                    "maxLength": ENTITY_ID_MAX_LENGTH,
                },
            ),
        ),
        group=(
            str,
            Field(
                default=first.name,
                description=f"A feature group of the {entity} entity."
                if not related
                else "A feature group of the entity.",
                json_schema_extra={"enum": list(group_names)},
            ),
        ),
        event_timestamp=(
            StrictInt | StrictFloat,
            Field(
                description="When the values became true, epoch seconds; older than stored "
                "is skipped.",
                examples=[1764230400],
                json_schema_extra={"minimum": 0, "maximum": MAX_EVENT_TIMESTAMP},
            ),
        ),
        values=(
            dict[str, Any],
            Field(
                description="Feature values by name: a number for a hash group's feature, a "
                "list of item ids for a sorted set, a list of numbers for a vector.",
                examples=[example] if example else None,
                # What a push may carry, published so clients (and the fuzz test) see every
                # feature; parse_update checks a value against its group.
                json_schema_extra=_feature_values_schema(project),
            ),
        ),
    )


def _feature_values_schema(project: Project) -> dict[str, Any]:
    """The JSON schema of a push's ``values``: every feature of the entity, with its type."""
    properties: dict[str, Any] = {}
    for group in project.groups:
        for feature in group.features:
            properties[feature.name] = codec_of(group).update_schema(feature)
            if feature.minimum is not None:
                properties[feature.name]["minimum"] = feature.minimum
            if feature.maximum is not None:
                properties[feature.name]["maximum"] = feature.maximum
    return {"properties": properties, "additionalProperties": False, "minProperties": 1}


def _example_id(entity: str, number: int = 123) -> str:
    return f"{entity[:1]}{number:06d}"


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) or "Project"
