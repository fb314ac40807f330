"""Redis key layout and entity id validation.

A key is ``{entity_type}:{<entity_id>}:{group}``, for example
``user:{u000123}:features``.  The id sits in a Redis Cluster hash tag, so
every group of one entity hashes to the same slot.  Ids are validated before
a key is built: a bad id is an ``InvalidEntityId``, never a stray key.

The alphabet of an entity id: 1-128 printable Unicode characters
(``str.isprintable``) other than whitespace and braces, in Unicode normal
form NFC.  So no control character (C0, DEL or C1), no invisible format
character (a zero-width space, a right-to-left override U+202E, a BOM...),
no surrogate, private-use or unassigned code point; and an id is refused,
not normalized, when it is not NFC.  Two ids that look the same are then
the same string, and the same key.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from features.errors import InvalidEntityId

__all__ = [
    "ENTITY_ID_MAX_LENGTH",
    "ENTITY_ID_PATTERN",
    "feature_key",
    "feature_keys",
    "validate_entity_id",
]

ENTITY_ID_MAX_LENGTH = 128
"""The longest entity id accepted, in characters."""

ENTITY_ID_PATTERN = rf"^[^\s{{}}\x00-\x1f\x7f-\x9f]{{1,{ENTITY_ID_MAX_LENGTH}}}$"
"""A regular expression every valid id matches (published in the API's schema); it cannot say
all of the rules in the module docstring, which ``validate_entity_id`` applies."""

# The common case, checked by one regex: printable ASCII other than space and braces.
_ASCII_ENTITY_ID = re.compile(rf"[!-z|~]{{1,{ENTITY_ID_MAX_LENGTH}}}")


def validate_entity_id(entity_id: object) -> str:
    """Return ``entity_id`` if it can be part of a key; raise ``InvalidEntityId`` naming why not."""
    if not isinstance(entity_id, str):
        raise InvalidEntityId(f"entity id must be a string, got {type(entity_id).__name__}")
    if _ASCII_ENTITY_ID.fullmatch(entity_id):
        return entity_id
    if not entity_id:
        raise InvalidEntityId("entity id is empty")
    if len(entity_id) > ENTITY_ID_MAX_LENGTH:
        raise InvalidEntityId(
            f"entity id is {len(entity_id)} characters long, at most {ENTITY_ID_MAX_LENGTH} allowed"
        )
    for char in entity_id:
        if char.isprintable() and not char.isspace() and char not in "{}":
            continue
        raise InvalidEntityId(f"entity id {entity_id!r} holds {_describe(char)}")
    if not unicodedata.is_normalized("NFC", entity_id):
        raise InvalidEntityId(
            f"entity id {entity_id!r} is not in Unicode normal form NFC: compose it first "
            "(e.g. unicodedata.normalize('NFC', id))"
        )
    return entity_id


def _describe(char: str) -> str:
    code = f"U+{ord(char):04X}"
    category = unicodedata.category(char)
    if char in "{}":
        return "a brace"
    if char.isspace():
        return f"whitespace ({code})"
    if category == "Cc":
        return f"a control character ({code})"
    if category == "Cf":
        return f"an invisible format character ({code})"
    return f"a character that is not printable ({code}, Unicode category {category})"


def feature_key(entity_type: str, entity_id: str, group: str) -> str:
    """The Redis key of one entity's feature group; the id is validated first."""
    return f"{entity_type}:{{{validate_entity_id(entity_id)}}}:{group}"


def feature_keys(entity_type: str, entity_ids: Sequence[str], group: str) -> list[str]:
    """``feature_key`` of each id, in order (the ids validated likewise)."""
    plain = _ASCII_ENTITY_ID.fullmatch
    checked = (i if plain(i) else validate_entity_id(i) for i in entity_ids)
    return [f"{entity_type}:{{{entity_id}}}:{group}" for entity_id in checked]
