"""One codec per Redis structure: everything that differs between a hash, a sorted set and a blob.

A codec knows, for groups of its ``Structure`` (``features.registry``):

- the Redis commands that read a group with its event time, how many replies they
  get, and how those replies decode (``read_commands``, ``replies_per_read``,
  ``folded``, ``decoded``; ``decodes_in_bulk`` says whether complete replies may
  go through ``hash_columns`` instead);
- the write script call for an update (``script_call``; the scripts are in
  ``redis_scripts``);
- how an update merges into what a store holds (``merged``, the per-structure
  part of ``write_rules.held_after_write``) and what a backing store answers for
  a read (``held_row``, for ``backing.read_held``);
- how a backing store keeps the values (``record``, ``values_of_record``,
  ``checked_values``, ``keeps_value_times``);
- how an update's values are validated (``update_values``) and described in an API
  schema (``update_schema``), and which table columns a materialization needs
  (``required_columns``);
- the memory one entity's keys take (``estimated_bytes``, ``memory_keys``, for
  ``capacity``).

Every path asks ``codec_of(group)`` instead of branching on the structure; a new
structure is a new ``Structure`` member (with its declaration checks), a codec
here, and its write script in ``redis_scripts``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from features.burst_log import BurstLog
from features.dtypes import DTYPES, shown_value
from features.errors import InvalidEntityId, InvalidUpdate
from features.keys import feature_key, validate_id
from features.registry import Feature, FeatureGroup, Structure
from features.sources import Degraded
from features.stores.base import (
    FailedRead,
    FeatureUpdate,
    ReadAnswer,
    ReadRequest,
    StoredRow,
    newest_members,
)
from features.stores.held import HeldGroup, Merged, as_held, group_label, held_group
from features.stores.redis_scripts import (
    EVENT_MS_FIELD,
    HASH_WRITE,
    SORTED_SET_WRITE,
    STRING_WRITE,
    Script,
)

__all__ = [
    "BadValue",
    "Command",
    "ScriptCall",
    "StructureCodec",
    "codec_of",
    "decode_reply",
]

_log = logging.getLogger(__name__)
_reply_log = BurstLog(_log)
"""Bad values in Redis replies."""
_bad_value_log = BurstLog(_log)
"""Bad values in backing-store records."""

_WRONG_TYPE = "WRONGTYPE"
"""The error reply to a read of a key that holds another structure: that key is bad."""

_INT = DTYPES["int"]

Command = tuple[str | int, ...]
"""A Redis command as its name and arguments."""

# The estimate's layout constants, in bytes, as Valkey 8.1's MEMORY USAGE counts them for
# the shipped registry (tests/test_capacity.py holds the estimate to within 15 % of it).
KEY_OVERHEAD = 40
"""Per key: its dictionary entry, object header and string headers."""
LISTPACK_OVERHEAD = 8
"""Per small hash or sorted set (a listpack): its header and end marker."""
ENTRY_OVERHEAD = 2
"""Per listpack entry: its encoding byte and back-length."""
TYPICAL_ENTRY = {"int": 3, "float": 8, "member": 6, "score": 5, "event_ms": 9}
"""Assumed encoded widths: a small int, a float written as text, an item id, an epoch
score in seconds, an epoch-millisecond event time (listpacks store integers in binary)."""


class BadValue(ValueError):
    """A stored value that cannot be what the registry declares: the key's fault, not the
    store's."""


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One update as a write script call, and the names its flags answer for, in order."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[bytes | str | int, ...]
    names: tuple[str, ...]
    size_bytes: int
    """About how many bytes the call's arguments take on the wire."""


class StructureCodec(ABC):
    """How groups of one structure are read, written, merged, kept, validated and sized."""

    structure: ClassVar[Structure]
    replies_per_read: ClassVar[int] = 1
    """How many replies ``read_commands`` get."""
    decodes_in_bulk: ClassVar[bool] = False
    """Whether complete replies of one group may be decoded together (``hash_columns``)."""
    keeps_value_times: ClassVar[bool] = False
    """Whether a backing store keeps an event time per value (else one per group)."""

    @abstractmethod
    def read_commands(self, key: str, request: ReadRequest) -> tuple[Command, ...]:
        """The commands that read ``request`` at ``key``, its values and event time together."""

    def folded(self, replies: Sequence[Any]) -> Any:
        """One reply from the ``replies_per_read`` replies to ``read_commands``."""
        return replies[0]

    @abstractmethod
    def decoded(self, request: ReadRequest, reply: Any) -> StoredRow | None:
        """The values in one (folded, not an error) reply; ``BadValue`` for a value the
        registry's declaration cannot hold; ``None`` when nothing is held."""

    @abstractmethod
    def script_call(self, key: str, update: FeatureUpdate, ttl_ms: int) -> ScriptCall:
        """The write script call for ``update`` at ``key``: its arguments are bounded by the
        group's shape."""

    @abstractmethod
    def merged(self, held: HeldGroup | None, update: FeatureUpdate) -> Merged:
        """``update`` merged into ``held`` (live or ``None``); see ``write_rules``."""

    @abstractmethod
    def held_row(self, request: ReadRequest, held: HeldGroup) -> StoredRow | None:
        """What Redis would answer for ``request`` if it held ``held`` (live)."""

    def record(self, group: FeatureGroup, values: Mapping[str, Any]) -> dict[str, Any]:
        """Held ``values`` as a backing store's record: name -> a number, a map of numbers or
        bytes (encoded as Redis keeps it)."""
        return dict(values)

    def values_of_record(self, group: FeatureGroup, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """The stored values in a backing store's ``record`` (its names not starting with
        ``_``), for ``checked_values``; ``ValueError`` when it has the wrong shape."""
        return record

    def checked_values(self, group: FeatureGroup, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Normalized values from a store's decoded record; invalid ones are logged and left out.

        Numbers may come back as ``int``, ``float`` or ``Decimal``; a vector as a list of
        numbers or as the packed float32 bytes Redis keeps.
        """
        values: dict[str, Any] = {}
        for name, raw in stored.items():
            feature = group.by_name.get(name)
            if feature is None:
                continue
            try:
                values[name] = self._checked_value(feature, raw)
            except (TypeError, ValueError) as exc:
                _bad_value_log.error(f"ignoring a stored {group_label(group)}.{name} value", exc)
        return values

    def _checked_value(self, feature: Feature, raw: Any) -> Any:
        if isinstance(raw, bytes):
            return feature.dtype.decode(raw, feature.dim)
        return feature.dtype.normalize([float(item) for item in raw], feature.dim)

    @abstractmethod
    def update_values(
        self, group: FeatureGroup, values: Mapping[str, Any], when: int
    ) -> dict[str, Any]:
        """An update's validated values (only known names, at least one); ``InvalidUpdate``
        names the field.  ``when``: the event time, epoch milliseconds."""

    @abstractmethod
    def update_schema(self, feature: Feature) -> dict[str, Any]:
        """The JSON schema of ``feature``'s value in an update."""

    def required_columns(self, group: FeatureGroup) -> tuple[str, ...]:
        """The feature columns a table must have to materialize ``group``."""
        return (group.features[0].name,)

    @abstractmethod
    def estimated_bytes(self, group: FeatureGroup, key_length: int) -> int:
        """A rough ``MEMORY USAGE`` of one entity's keys of ``group``, the key ``key_length``
        characters long."""

    def memory_keys(self, key: str) -> tuple[str, ...]:
        """The keys one entity's group takes, ``key`` first."""
        return (key,)


class HashCodec(StructureCodec):
    """A hash per entity: fields are feature names, plus ``_event_ms`` (the newest event
    time); values merge field by field."""

    structure = Structure.HASH
    decodes_in_bulk = True
    keeps_value_times = True

    def read_commands(self, key: str, request: ReadRequest) -> tuple[Command, ...]:
        """One ``HMGET`` of the fields and ``_event_ms``."""
        return (("HMGET", key, *request.fields, EVENT_MS_FIELD),)

    def decoded(self, request: ReadRequest, reply: Any) -> StoredRow | None:
        """See ``StructureCodec.decoded``."""
        group = request.group
        by_name = group.by_name
        # The reply is one longer than the fields: _event_ms comes last.
        values = tuple(
            None if raw is None else _checked(by_name[name], raw)
            for name, raw in zip(request.fields, reply, strict=False)
        )
        if values.count(None) == len(values):
            return None
        return StoredRow(request.fields, values, _event_ms(group.name, reply[-1]))

    def script_call(self, key: str, update: FeatureUpdate, ttl_ms: int) -> ScriptCall:
        """See ``StructureCodec.script_call``."""
        # Sizes count an int as 20 bytes, its longest.
        args: list[bytes | str | int] = [ttl_ms, update.event_ms, len(update.value_ms)]
        size = len(key) + 60
        for name, at in update.value_ms.items():
            args += (name, at)
            size += len(name) + 20
        by_name = update.group.by_name
        for name, value in update.values.items():
            encoded = _bytes(by_name[name].dtype.encode(value))
            args += (name, encoded)
            size += len(name) + len(encoded)
        return ScriptCall(HASH_WRITE, (key,), tuple(args), tuple(update.values), size)

    def merged(self, held: HeldGroup | None, update: FeatureUpdate) -> Merged:
        """Field by field: a value lands unless the field holds a newer one (an equal one is
        written again); fields the update lacks keep their values."""
        if held is None:
            return Merged(as_held(update), frozenset(update.values))
        values = dict(held.values)
        times = {name: held.ms_of(name) for name in values}
        landed = set()
        for name, value in update.values.items():
            at = update.ms_of(name)
            if name not in times or at >= times[name]:
                values[name] = value
                times[name] = at
                landed.add(name)
        if not landed:
            return Merged(None, frozenset())
        return Merged(held_group(values, times), frozenset(landed))

    def held_row(self, request: ReadRequest, held: HeldGroup) -> StoredRow | None:
        """The requested fields, and the newest event time."""
        values = tuple(map(held.values.get, request.fields))
        if values.count(None) == len(values):
            return None
        return StoredRow(request.fields, values, held.event_ms)

    def _checked_value(self, feature: Feature, raw: Any) -> Any:
        if isinstance(raw, bytes):
            return feature.dtype.decode(raw, feature.dim)
        return feature.dtype.decode(str(raw).encode(), feature.dim)

    def update_values(
        self, group: FeatureGroup, values: Mapping[str, Any], when: int
    ) -> dict[str, Any]:
        """Each value normalized and within its range; a ``None`` value is left out (the
        field keeps what is held)."""
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            feature = group.by_name[name]
            try:
                normalized = feature.dtype.normalize(value, feature.dim)
            except (TypeError, ValueError) as exc:
                raise InvalidUpdate(name, f"{shown_value(value)}: {exc}") from None
            problem = feature.out_of_range(normalized)
            if problem:
                raise InvalidUpdate(name, problem)
            checked[name] = normalized
        if not checked:
            raise InvalidUpdate("values", "every value is null")
        return checked

    def update_schema(self, feature: Feature) -> dict[str, Any]:
        """An integer or a number, as the feature declares."""
        return {"type": "integer"} if feature.type_name == "int" else {"type": "number"}

    def required_columns(self, group: FeatureGroup) -> tuple[str, ...]:
        """None in particular: any of the group's features."""
        return ()

    def estimated_bytes(self, group: FeatureGroup, key_length: int) -> int:
        """See ``StructureCodec.estimated_bytes``."""
        fields = [(EVENT_MS_FIELD, "event_ms")] + [(f.name, f.type_name) for f in group.features]
        payload = LISTPACK_OVERHEAD + sum(
            len(name) + TYPICAL_ENTRY[kind] + 2 * ENTRY_OVERHEAD for name, kind in fields
        )
        return KEY_OVERHEAD + key_length + payload


class SortedSetCodec(StructureCodec):
    """A sorted set per entity: members scored by event time in seconds, like ``ZADD GT``;
    the newest ``top_n`` are kept and read."""

    structure = Structure.SORTED_SET

    def read_commands(self, key: str, request: ReadRequest) -> tuple[Command, ...]:
        """One ``ZREVRANGE ... WITHSCORES`` (the highest score is the newest event time)."""
        return (("ZREVRANGE", key, 0, (request.group.top_n or 1) - 1, "WITHSCORES"),)

    def decoded(self, request: ReadRequest, reply: Any) -> StoredRow | None:
        """See ``StructureCodec.decoded``."""
        if not reply:
            return None
        group = request.group
        if isinstance(reply[0], list):
            # redis-py's blocking client turns WITHSCORES replies into [member, score] pairs.
            raw, event_ms = [pair[0] for pair in reply], _newest_score_ms(group.name, reply[0][1])
        else:
            raw, event_ms = reply[0::2], _newest_score_ms(group.name, reply[1])
        feature = group.features[0]
        return StoredRow((feature.name,), (_checked(feature, raw),), event_ms)

    def script_call(self, key: str, update: FeatureUpdate, ttl_ms: int) -> ScriptCall:
        """See ``StructureCodec.script_call``; members beyond the ``top_n`` newest are
        dropped before they are sent."""
        group = update.group
        kept = newest_members(update.values, group.top_n or 1)
        args: list[bytes | str | int] = [ttl_ms, group.top_n or 1]
        size = len(key) + 40
        for member in kept:
            score = repr(float(update.values[member]))
            args += (score, member)
            size += len(score) + len(member)
        return ScriptCall(SORTED_SET_WRITE, (key,), tuple(args), tuple(kept), size)

    def merged(self, held: HeldGroup | None, update: FeatureUpdate) -> Merged:
        """The higher score per member, the newest ``top_n`` kept."""
        members = dict(held.values) if held else {}
        for member, score in update.values.items():
            members[member] = max(score, members.get(member, score))
        top_n = update.group.top_n or 1
        kept = {member: members[member] for member in newest_members(members, top_n)}
        landed = frozenset(m for m, score in update.values.items() if kept.get(m) == score)
        if not landed:
            return Merged(None, frozenset())
        event_ms = max(held.event_ms, update.event_ms) if held else update.event_ms
        return Merged(HeldGroup(event_ms, kept), landed)

    def held_row(self, request: ReadRequest, held: HeldGroup) -> StoredRow | None:
        """The newest ``top_n`` members, and the highest score as the event time."""
        group = request.group
        members = tuple(newest_members(held.values, group.top_n or 1))
        if not members:
            return None
        feature = group.features[0]
        return StoredRow((feature.name,), (members,), round(held.values[members[0]] * 1000))

    def record(self, group: FeatureGroup, values: Mapping[str, Any]) -> dict[str, Any]:
        """The members under the feature's name, each with its score."""
        return {group.features[0].name: dict(values)}

    def values_of_record(self, group: FeatureGroup, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """See ``StructureCodec.values_of_record``: the members under the feature's name."""
        name = group.features[0].name
        stored = record.get(name, {})
        if not isinstance(stored, Mapping):
            raise ValueError(f"{name} is not a map of members")
        return stored

    def checked_values(self, group: FeatureGroup, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Members with their scores as floats; invalid ones are logged and left out."""
        members: dict[str, float] = {}
        for member, raw in stored.items():
            try:
                members[member] = float(raw)
            except (TypeError, ValueError) as exc:
                _bad_value_log.error(f"ignoring a stored {group_label(group)} member", exc)
        return members

    def update_values(
        self, group: FeatureGroup, values: Mapping[str, Any], when: int
    ) -> dict[str, Any]:
        """Item ids scored by the event time in seconds."""
        name = group.features[0].name
        items = values[name]
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list | tuple) or not items:
            raise InvalidUpdate(name, "expected an item id or a non-empty list of item ids")
        for item in items:
            try:
                validate_id(item, "item id")
            except InvalidEntityId as exc:
                raise InvalidUpdate(name, str(exc)) from None
        return dict.fromkeys(items, when / 1000)

    def update_schema(self, feature: Feature) -> dict[str, Any]:
        """Any number of item ids (the newest ``top_n`` are kept)."""
        return {"type": "array", "items": {"type": "string"}}

    def estimated_bytes(self, group: FeatureGroup, key_length: int) -> int:
        """See ``StructureCodec.estimated_bytes``."""
        entry = TYPICAL_ENTRY["member"] + TYPICAL_ENTRY["score"] + 2 * ENTRY_OVERHEAD
        return KEY_OVERHEAD + key_length + LISTPACK_OVERHEAD + (group.top_n or 1) * entry


class StringCodec(StructureCodec):
    """A blob per entity (a packed float32 vector) and a sibling key ``<key>:_event_ms``
    holding its event time; the blob is replaced whole unless a newer one is held."""

    structure = Structure.STRING
    replies_per_read = 2

    def read_commands(self, key: str, request: ReadRequest) -> tuple[Command, ...]:
        """``GET`` of the blob, then ``GET`` of its sibling ``<key>:_event_ms``, in the same
        round trip (not one ``MGET``, which answers a key of another type as absent where
        ``GET`` answers ``WRONGTYPE``)."""
        return (("GET", key), ("GET", f"{key}:{EVENT_MS_FIELD}"))

    def folded(self, replies: Sequence[Any]) -> Any:
        """``(blob, event time)``, or the blob's error reply alone."""
        reply, event_reply = replies
        return reply if isinstance(reply, Exception) else (reply, event_reply)

    def decoded(self, request: ReadRequest, reply: Any) -> StoredRow | None:
        """See ``StructureCodec.decoded``."""
        raw, event_raw = reply
        if not raw:
            return None
        group = request.group
        feature = group.features[0]
        return StoredRow(
            (feature.name,), (_checked(feature, raw),), _event_ms(group.name, event_raw)
        )

    def script_call(self, key: str, update: FeatureUpdate, ttl_ms: int) -> ScriptCall:
        """See ``StructureCodec.script_call``."""
        feature = update.group.features[0]
        blob = _bytes(feature.dtype.encode(update.values[feature.name]))
        event_key = f"{key}:{EVENT_MS_FIELD}"
        args: list[bytes | str | int] = [update.event_ms, update.event_ms + ttl_ms, blob]
        size = len(key) + len(event_key) + 40 + len(blob)
        return ScriptCall(STRING_WRITE, (key, event_key), tuple(args), (feature.name,), size)

    def merged(self, held: HeldGroup | None, update: FeatureUpdate) -> Merged:
        """The vector replaced whole, unless a newer one is held (an equal one is written
        again)."""
        if held is not None and held.event_ms > update.event_ms:
            return Merged(None, frozenset())
        return Merged(as_held(update), frozenset(update.values))

    def held_row(self, request: ReadRequest, held: HeldGroup) -> StoredRow | None:
        """The vector, and its event time."""
        feature = request.group.features[0]
        vector = held.values.get(feature.name)
        return None if vector is None else StoredRow((feature.name,), (vector,), held.event_ms)

    def record(self, group: FeatureGroup, values: Mapping[str, Any]) -> dict[str, Any]:
        """The vector as the packed float32 bytes Redis keeps."""
        feature = group.features[0]
        return {feature.name: feature.dtype.encode(values[feature.name])}

    def update_values(
        self, group: FeatureGroup, values: Mapping[str, Any], when: int
    ) -> dict[str, Any]:
        """The vector, normalized to its declared dimension."""
        feature = group.features[0]
        try:
            vector = feature.dtype.normalize(values[feature.name], feature.dim)
        except (TypeError, ValueError) as exc:
            raise InvalidUpdate(feature.name, str(exc)) from None
        return {feature.name: vector}

    def update_schema(self, feature: Feature) -> dict[str, Any]:
        """Exactly ``dim`` numbers."""
        return {
            "type": "array",
            "items": {"type": "number"},
            "minItems": feature.dim,
            "maxItems": feature.dim,
        }

    def estimated_bytes(self, group: FeatureGroup, key_length: int) -> int:
        """See ``StructureCodec.estimated_bytes``: the blob, and its sibling key holding the
        event time (an int, no payload)."""
        blob = 4 * (group.features[0].dim or 1)
        return 2 * (KEY_OVERHEAD + key_length) + blob + len(f":{EVENT_MS_FIELD}")

    def memory_keys(self, key: str) -> tuple[str, ...]:
        """The blob's key and its sibling's."""
        return (key, f"{key}:{EVENT_MS_FIELD}")


_CODECS: Mapping[Structure, StructureCodec] = {
    codec.structure: codec for codec in (HashCodec(), SortedSetCodec(), StringCodec())
}


def codec_of(group: FeatureGroup) -> StructureCodec:
    """The codec of ``group``'s structure."""
    return _CODECS[group.structure]


def decode_reply(request: ReadRequest, reply: Any) -> ReadAnswer:
    """The values in one (folded) reply, with their event time.  A value the registry's
    declaration cannot hold (or a key of the wrong type) fails the whole entity-group as
    ``bad_value``: its fallbacks stand in, the model never sees the value, and the log names
    the key.  Any other error reply is a ``FailedRead`` naming the error."""
    try:
        if isinstance(reply, Exception):
            text = _error_text(reply)
            if text.startswith(_WRONG_TYPE):
                raise BadValue(text)
            return FailedRead(text)
        return codec_of(request.group).decoded(request, reply)
    except BadValue as exc:
        group = request.group
        key = feature_key(group.entity.key_name, request.entity_id, group.name)
        _reply_log.error(f"{key} holds a bad value, served from the fallbacks: {exc}")
        return FailedRead(f"{key}: {exc}", Degraded.BAD_VALUE)


def _error_text(error: Exception) -> str:
    """An error reply as Redis said it: redis-py keeps the code (``NOPERM``) apart."""
    code = getattr(error, "status_code", None)
    text = str(error)
    return f"{code} {text}" if code and not text.startswith(code) else text


def _event_ms(group_name: str, raw: Any) -> int | None:
    """An ``_event_ms`` reply as epoch milliseconds; ``None`` when absent or not an integer
    (the values stand; only their age is unknown)."""
    if raw is None or isinstance(raw, Exception):
        return None
    try:
        # As an int feature is read, so that bulk decoding (``hash_columns``) agrees.
        return int(_INT.decode(raw, None))
    except ValueError as exc:
        _reply_log.error(f"ignoring a stored {group_name} {EVENT_MS_FIELD}", exc)
        return None


def _newest_score_ms(group_name: str, raw: bytes | float) -> int | None:
    """A sorted set's highest score (event seconds) as epoch milliseconds."""
    try:
        seconds = float(raw)
    except ValueError as exc:
        _reply_log.error(f"ignoring a stored {group_name} score", exc)
        return None
    return round(seconds * 1000) if math.isfinite(seconds) else None


def _checked(feature: Feature, raw: Any) -> Any:
    """``raw`` decoded as ``feature`` declares it; ``BadValue`` naming what is wrong."""
    try:
        value = feature.dtype.decode(raw, feature.dim)
    except ValueError as exc:
        raise BadValue(f"{feature.name}: {exc}") from None
    problem = feature.out_of_range(value) or _too_long(feature, value)
    if problem:
        raise BadValue(f"{feature.name}: {problem}")
    return value


def _too_long(feature: Feature, value: Any) -> str | None:
    if feature.dim is not None and isinstance(value, tuple) and len(value) > feature.dim:
        return f"holds {len(value)} items, at most {feature.dim} declared"
    return None


def _bytes(encoded: bytes | Sequence[bytes]) -> bytes:
    if not isinstance(encoded, bytes):
        raise TypeError("a hash or string group's value encodes to bytes")
    return encoded
