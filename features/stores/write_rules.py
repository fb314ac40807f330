"""The write rules every path follows: event-time merge, TTL expiry, the clock they read.

Redis (the scripts in ``redis_scripts``), the backing stores (``backing``),
the chunk writer and rewarm (``features.ingest``) all decide with these:

- **Merge** (``held_after_write``), value by value by event time:

  - hash: field by field, a value lands unless the field holds a newer one (an
    equal one is written again); fields the update lacks keep their values.
  - string: the same, the vector replaced whole.
  - sorted set: like ``ZADD GT``: members merge keeping the higher score, the
    newest ``top_n`` are kept.

- **Expiry** (``is_live``): a group whose newest event time is older than its
  TTL (``FeatureGroup.ttl``) has expired: live iff ``event_ms + ttl_ms >
  now_ms``, with ``now_ms`` from an injectable clock (``time.time`` unless a
  test pins it).  Redis applies the same rule, ``PEXPIREAT`` the newest event
  time plus the TTL.  An expired group counts as absent, as a key Redis has
  expired: ``held_after_write`` neither merges into it nor skips an update as
  older than it.

Values are held in their normalized Python form (``HeldGroup``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from features.registry import FeatureGroup, Structure
from features.stores.base import FeatureUpdate, WriteOutcome, newest_members

__all__ = [
    "Clock",
    "HeldGroup",
    "Merged",
    "as_held",
    "as_update",
    "epoch_ms",
    "expires_at_ms",
    "held_after_write",
    "held_group",
    "is_live",
    "oldest_live_ms",
    "unexpired",
]

Clock = Callable[[], float]
"""Now, in epoch seconds: ``time.time``, or a fixed time in tests."""


@dataclass(frozen=True, slots=True)
class HeldGroup:
    """What a backing store holds for one entity group.

    ``values`` has the shape of ``FeatureUpdate.values``: feature -> value for
    a hash, member -> score for a sorted set, feature -> vector for a string.
    ``event_ms`` is the newest event time held; ``value_ms`` the event time of
    each hash value older than that (``held_group`` builds it in this form).
    """

    event_ms: int
    values: Mapping[str, Any]
    value_ms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def ms_of(self, name: str) -> int:
        """The event time of the value ``name``."""
        return self.value_ms.get(name, self.event_ms)


def held_group(values: Mapping[str, Any], times: Mapping[str, int]) -> HeldGroup:
    """``values`` held at ``times`` (one per value), in ``HeldGroup``'s compact form."""
    newest = max(times.values())
    older = {name: at for name, at in times.items() if at != newest}
    return HeldGroup(newest, dict(values), MappingProxyType(older))


def as_held(update: FeatureUpdate) -> HeldGroup:
    """What a store holds after ``update`` when it held nothing of its group."""
    return HeldGroup(update.event_ms, dict(update.values), update.value_ms)


def as_update(entity_id: str, group: FeatureGroup, held: HeldGroup) -> FeatureUpdate:
    """``held`` as an update that writes it, each value at its own event time."""
    return FeatureUpdate(entity_id, group, held.event_ms, held.values, held.value_ms)


@dataclass(frozen=True, slots=True)
class Merged:
    """An update merged into what a store holds."""

    after: HeldGroup | None
    """What to hold now; ``None`` when nothing landed, so what is held stays."""
    landed: frozenset[str]
    """The names (fields, members, the string's feature) of the update now held."""

    @property
    def outcome(self) -> WriteOutcome:
        """The update's ``WriteOutcome``."""
        return WriteOutcome(self.landed)


def epoch_ms(clock: Clock) -> int:
    """``clock``'s time in whole epoch milliseconds.

    Rounded down, which changes no answer of ``is_live``: event times are whole
    milliseconds too.
    """
    return math.floor(clock() * 1000)


def _ttl_ms(group: FeatureGroup) -> int:
    return group.ttl // timedelta(milliseconds=1)


def is_live(group: FeatureGroup, event_ms: int, now_ms: int) -> bool:
    """Whether values of ``group`` as of ``event_ms`` are within its TTL at ``now_ms``.

    The one expiry rule: live iff ``event_ms + ttl_ms > now_ms``.
    """
    return event_ms + _ttl_ms(group) > now_ms


def expires_at_ms(group: FeatureGroup, event_ms: int) -> int:
    """The first time at which ``is_live`` says values of ``group`` as of ``event_ms`` expired."""
    return event_ms + _ttl_ms(group)


def oldest_live_ms(group: FeatureGroup, now_ms: int) -> int:
    """The oldest event time of ``group`` that ``is_live`` accepts at ``now_ms``.

    For a store that checks liveness on the server, in a condition.
    """
    return now_ms - _ttl_ms(group) + 1


def unexpired(group: FeatureGroup, held: HeldGroup | None, now_ms: int) -> HeldGroup | None:
    """``held``, or ``None`` when it has expired: an expired group counts as absent."""
    if held is None or not is_live(group, held.event_ms, now_ms):
        return None
    return held


def held_after_write(held: HeldGroup | None, update: FeatureUpdate, now_ms: int) -> Merged:
    """``update`` merged into ``held`` at ``now_ms``, value by value; see the module docstring.

    An expired ``held`` counts as absent: the update replaces it whole.
    """
    group = update.group
    held = unexpired(group, held, now_ms)
    if group.structure is Structure.SORTED_SET:
        return _merge_members(held, update)
    if held is None:
        return Merged(as_held(update), frozenset(update.values))
    if group.structure is Structure.STRING:
        if held.event_ms > update.event_ms:
            return Merged(None, frozenset())
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


def _merge_members(held: HeldGroup | None, update: FeatureUpdate) -> Merged:
    """A sorted set after ``update``: the higher score per member, the newest ``top_n`` kept."""
    members = dict(held.values) if held else {}
    for member, score in update.values.items():
        members[member] = max(score, members.get(member, score))
    kept = {member: members[member] for member in newest_members(members, update.group.top_n or 1)}
    landed = frozenset(m for m, score in update.values.items() if kept.get(m) == score)
    if not landed:
        return Merged(None, frozenset())
    event_ms = max(held.event_ms, update.event_ms) if held else update.event_ms
    return Merged(HeldGroup(event_ms, kept), landed)
