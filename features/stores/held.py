"""What a store holds for one entity group (``HeldGroup``), and an update merged into it.

The merge itself is a write rule (``write_rules.held_after_write``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from features.registry import FeatureGroup
from features.stores.base import FeatureUpdate, WriteOutcome

__all__ = ["HeldGroup", "Merged", "as_held", "as_update", "group_label", "held_group"]


def group_label(group: FeatureGroup) -> str:
    """``entity:group``, the name a store files a record under for ``scan``."""
    return f"{group.entity.key_name}:{group.name}"


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
