"""Redis key layout, and the one rule for every id a client or a table names.

A key is ``{entity_type}:{<entity_id>}:{group}``, for example
``user:{u000123}:features``.  The id sits in a Redis Cluster hash tag, so
every group of one entity hashes to the same slot.  Ids are validated before
a key is built: a bad id is an ``InvalidEntityId``, never a stray key.

The one id rule (``validate_id``), for entity ids and for the members of
sorted sets (item ids) alike, through the API, ``featserve materialize`` and
every store: 1-128 printable Unicode characters (``str.isprintable``) other
than whitespace and braces, in Unicode normal form NFC.  So no control
character (C0, DEL or C1), no invisible format character (a zero-width
space, a right-to-left override U+202E, a BOM...), no surrogate, private-use
or unassigned code point; no character Unicode says to draw as nothing
(``Default_Ignorable_Code_Point``: the Hangul fillers such as U+3164,
variation selectors such as U+FE0F, the combining grapheme joiner...); no
combining mark first, where it has no character to sit on; and an id is
refused, not normalized, when it is not NFC.  Two ids that look the same
are then the same string, and the same key.
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
    "validate_id",
]

ENTITY_ID_MAX_LENGTH = 128
"""The longest id accepted (entity or item), in characters."""

ENTITY_ID_PATTERN = rf"^[^\s{{}}\x00-\x1f\x7f-\x9f]{{1,{ENTITY_ID_MAX_LENGTH}}}$"
"""A regular expression every valid id matches (published in the API's schema); it cannot say
all of the rules in the module docstring, which ``validate_entity_id`` applies."""

# The common case, checked by one regex: printable ASCII other than space and braces.
_ASCII_ENTITY_ID = re.compile(rf"[!-z|~]{{1,{ENTITY_ID_MAX_LENGTH}}}")

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, stable since Unicode 6):
# drawn as nothing.  Those that are format characters or unassigned are refused as such first.
_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def validate_id(value: object, what: str = "entity id") -> str:
    """Return ``value`` if it is a valid id (see the module docstring); raise
    ``InvalidEntityId`` naming why not, the id called ``what`` (``entity id``, ``item id``)."""
    if not isinstance(value, str):
        raise InvalidEntityId(f"{what} must be a string, got {type(value).__name__}")
    if _ASCII_ENTITY_ID.fullmatch(value):
        return value
    if not value:
        raise InvalidEntityId(f"{what} is empty")
    if len(value) > ENTITY_ID_MAX_LENGTH:
        raise InvalidEntityId(
            f"{what} is {len(value)} characters long, at most {ENTITY_ID_MAX_LENGTH} allowed"
        )
    for char in value:
        if char.isprintable() and not char.isspace() and char not in "{}":
            if _DEFAULT_IGNORABLE.match(char):
                raise InvalidEntityId(f"{what} {value!r} holds {_describe(char)}")
            continue
        raise InvalidEntityId(f"{what} {value!r} holds {_describe(char)}")
    if unicodedata.category(value[0]).startswith("M"):
        raise InvalidEntityId(
            f"{what} {value!r} starts with a combining mark (U+{ord(value[0]):04X}), "
            "which has no character to sit on"
        )
    if not unicodedata.is_normalized("NFC", value):
        raise InvalidEntityId(
            f"{what} {value!r} is not in Unicode normal form NFC: compose it first "
            "(e.g. unicodedata.normalize('NFC', id))"
        )
    return value


def validate_entity_id(entity_id: object) -> str:
    """Return ``entity_id`` if it can be part of a key; raise ``InvalidEntityId`` naming why not."""
    return validate_id(entity_id, "entity id")


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
    if _DEFAULT_IGNORABLE.match(char):
        return f"an invisible character ({code}, drawn as nothing)"
    return f"a character that is not printable ({code}, Unicode category {category})"


def feature_key(entity_type: str, entity_id: str, group: str) -> str:
    """The Redis key of one entity's feature group; the id is validated first."""
    return f"{entity_type}:{{{validate_entity_id(entity_id)}}}:{group}"


def feature_keys(entity_type: str, entity_ids: Sequence[str], group: str) -> list[str]:
    """``feature_key`` of each id, in order (the ids validated likewise)."""
    plain = _ASCII_ENTITY_ID.fullmatch
    checked = (i if plain(i) else validate_entity_id(i) for i in entity_ids)
    return [f"{entity_type}:{{{entity_id}}}:{group}" for entity_id in checked]
