"""Redis key layout and entity id validation.

A key is ``{entity_type}:{<entity_id>}:{group}``, for example
``user:{u000123}:features``.  The id sits in a Redis Cluster hash tag, so
every group of one entity hashes to the same slot.  Ids are validated before
a key is built: a bad id is an ``InvalidEntityId``, never a stray key.
"""

from __future__ import annotations

import re

from features.errors import InvalidEntityId

__all__ = ["ENTITY_ID_MAX_LENGTH", "ENTITY_ID_PATTERN", "feature_key", "validate_entity_id"]

ENTITY_ID_MAX_LENGTH = 128
"""The longest entity id accepted, in characters."""

ENTITY_ID_PATTERN = rf"^[^\s{{}}\x00-\x1f\x7f]{{1,{ENTITY_ID_MAX_LENGTH}}}$"
"""An entity id: 1-128 characters, no whitespace, control characters or braces."""

_ENTITY_ID = re.compile(ENTITY_ID_PATTERN)


def validate_entity_id(entity_id: object) -> str:
    """Return ``entity_id`` if it can be part of a key; raise ``InvalidEntityId`` naming why not."""
    if not isinstance(entity_id, str):
        raise InvalidEntityId(f"entity id must be a string, got {type(entity_id).__name__}")
    if _ENTITY_ID.fullmatch(entity_id):
        return entity_id
    if not entity_id:
        raise InvalidEntityId("entity id is empty")
    if len(entity_id) > ENTITY_ID_MAX_LENGTH:
        raise InvalidEntityId(
            f"entity id is {len(entity_id)} characters long, at most {ENTITY_ID_MAX_LENGTH} allowed"
        )
    raise InvalidEntityId(
        f"entity id {entity_id!r} holds whitespace, a control character or a brace"
    )


def feature_key(entity_type: str, entity_id: str, group: str) -> str:
    """The Redis key of one entity's feature group; the id is validated first."""
    return f"{entity_type}:{{{validate_entity_id(entity_id)}}}:{group}"
