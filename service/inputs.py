"""The request bodies of the HTTP API, validated by pydantic before any work is done.

Unknown keys are refused at every level of every body (``UNKNOWN_KEYS_RULE``):
the top level of each endpoint's body (BentoML's input models, configured in
``service.service``), each batch item and each update; feature names in a
push's ``values`` are checked against the group by ``parse_update``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from features.errors import RegistryError
from features.ingest.updates import MAX_EVENT_TIMESTAMP
from features.keys import ENTITY_ID_MAX_LENGTH, ENTITY_ID_PATTERN, validate_entity_id
from features.registry import FRAUD_REGISTRY

__all__ = [
    "UNKNOWN_KEYS_RULE",
    "Amount",
    "EntityId",
    "GroupNames",
    "PushUpdate",
    "ScoreInput",
    "Timestamp",
]

UNKNOWN_KEYS_RULE = ConfigDict(extra="forbid")
"""The one rule for keys a body's model does not declare: refused, naming the key's place."""

_USER_GROUPS = tuple(group.name for group in FRAUD_REGISTRY.groups_of("user"))


def _known_groups(names: list[str]) -> list[str]:
    """``names`` without repeats, in order; ``ValueError`` naming the first unknown group."""
    unique = list(dict.fromkeys(names))
    for name in unique:
        try:
            FRAUD_REGISTRY.group("user", name)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
    return unique


EntityId = Annotated[
    str,
    AfterValidator(validate_entity_id),
    Field(
        description="1-128 printable Unicode characters in normal form NFC, without "
        "whitespace or braces (no control, invisible or default-ignorable characters, no "
        "combining mark first).",
        examples=["u000123"],
        json_schema_extra={"pattern": ENTITY_ID_PATTERN},
    ),
]
"""An entity id; a bad one is refused with the reason ``validate_entity_id`` gives."""
GroupNames = Annotated[
    list[str],
    # Bounded by the number of groups: a longer list repeats a name or names an unknown one,
    # and refusing it costs nothing, where resolving each repeat cost the event loop dearly.
    Field(
        min_length=1,
        max_length=len(_USER_GROUPS),
        description="Feature groups of the user entity; repeats are dropped.",
        json_schema_extra={"items": {"type": "string", "enum": list(_USER_GROUPS)}},
    ),
    AfterValidator(_known_groups),
]
"""Feature groups to resolve: known names of the user entity, each once."""
Amount = Annotated[
    float,
    Field(
        strict=True, ge=0, allow_inf_nan=False, description="Transaction amount.", examples=[250.0]
    ),
]
Timestamp = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        le=4_102_444_800,
        description="Transaction time, epoch seconds (UTC); defaults to now.",
        examples=[1764230400],
    ),
]


def _feature_values_schema() -> dict[str, Any]:
    """The JSON schema of a push's ``values``: every user feature by name, with its type."""
    properties: dict[str, Any] = {}
    for group in FRAUD_REGISTRY.groups_of("user"):
        for feature in group.features:
            properties[feature.name] = _value_schema(feature.type_name, feature.dim)
            if feature.minimum is not None:
                properties[feature.name]["minimum"] = feature.minimum
            if feature.maximum is not None:
                properties[feature.name]["maximum"] = feature.maximum
    return {"properties": properties, "additionalProperties": False, "minProperties": 1}


def _value_schema(type_name: str, dim: int | None) -> dict[str, Any]:
    if type_name == "int":
        return {"type": "integer"}
    if type_name == "float":
        return {"type": "number"}
    if type_name == "float32_vector" and dim is not None:
        return {"type": "array", "items": {"type": "number"}, "minItems": dim, "maxItems": dim}
    # A sorted-set group takes any number of items (it keeps the newest top_n).
    return {"type": "array", "items": {"type": "string"}}


class ScoreInput(BaseModel):
    """One transaction to score."""

    model_config = ConfigDict(**UNKNOWN_KEYS_RULE, frozen=True)

    entity_id: EntityId
    amount: Amount
    timestamp: Timestamp | None = None


class PushUpdate(BaseModel):
    """New values of one entity's feature group, as of ``event_timestamp``."""

    model_config = ConfigDict(**UNKNOWN_KEYS_RULE, frozen=True)

    # Checked by parse_update (a refusal names the update's index); the schema says the rules.
    entity_id: str = Field(
        examples=["u000123"],
        json_schema_extra={
            "pattern": ENTITY_ID_PATTERN,
            "minLength": 1,
            "maxLength": ENTITY_ID_MAX_LENGTH,
        },
    )
    group: str = Field(
        default="features",
        description="A feature group of the user entity.",
        json_schema_extra={"enum": list(_USER_GROUPS)},
    )
    event_timestamp: StrictInt | StrictFloat = Field(
        description="When the values became true, epoch seconds; older than stored is skipped.",
        examples=[1764230400],
        json_schema_extra={"minimum": 0, "maximum": MAX_EVENT_TIMESTAMP},
    )
    values: dict[str, Any] = Field(
        description="Feature values by name; for recent_items a list of item ids; "
        "for embedding a list of 16 numbers.",
        examples=[{"tx_count_1h": 3, "tx_sum_1h": 120.5}],
        # What a push may carry, published so clients (and the fuzz test) see every feature;
        # parse_update checks a value against its group.
        json_schema_extra=_feature_values_schema(),
    )
