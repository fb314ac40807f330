"""The request bodies of the HTTP API, validated by pydantic before any work is done."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from features.keys import ENTITY_ID_PATTERN, validate_entity_id

__all__ = ["Amount", "EntityId", "ScoreInput", "Timestamp"]

EntityId = Annotated[
    str,
    AfterValidator(validate_entity_id),
    Field(
        description="1-128 characters without whitespace, control characters or braces.",
        examples=["u000123"],
        json_schema_extra={"pattern": ENTITY_ID_PATTERN},
    ),
]
"""An entity id; a bad one is refused with the reason ``validate_entity_id`` gives."""
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


class ScoreInput(BaseModel):
    """One transaction to score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity_id: EntityId
    amount: Amount
    timestamp: Timestamp | None = None
