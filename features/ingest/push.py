"""The accounting of ``POST /push``: updates parsed all or none, then written, each one
accounted for, as ``materialize`` accounts for the rows of a table.

``parse_pushed`` validates every update of a push (``parse_update``, the rule book
materialize uses too) and names each refusal by its index; a push with any refusal writes
nothing.  ``write_pushed`` writes the updates still live (an update past its group's TTL is
``expired``, not written) and says of every update what became of it: written, ``stale``
(the store held newer values), ``expired``, or refused by the store for its data.  A store
that cannot take the write raises ``StoreError``: the caller answers that retrying is safe,
since older values never replace newer ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from features.errors import InvalidUpdate, RegistryError
from features.ingest.updates import parse_update
from features.registry import Registry
from features.stores.base import AsyncOnlineStore, FeatureUpdate
from features.stores.write_rules import is_live

__all__ = ["PushRefusal", "PushResult", "PushedUpdate", "parse_pushed", "write_pushed"]


@dataclass(frozen=True, slots=True)
class PushedUpdate:
    """One update as a producer sent it."""

    entity: str
    group: str
    entity_id: str
    event_timestamp: Any
    values: Any


@dataclass(frozen=True, slots=True)
class PushRefusal:
    """An update refused, by its index in the push, with the field at fault and why."""

    index: int
    entity_id: str
    field: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        """The refusal as the API answers it."""
        return {
            "index": self.index,
            "entity_id": self.entity_id,
            "field": self.field,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class PushResult:
    """What became of each update of a push that was written."""

    written: int
    """Updates of which the store took at least one value."""
    stale: tuple[int, ...]
    """Indexes of updates the store already held newer values for."""
    expired: tuple[int, ...]
    """Indexes of updates past their group's TTL, not written."""
    refused: tuple[PushRefusal, ...]
    """Updates a store refused for their data (retrying cannot help)."""


def parse_pushed(
    updates: Sequence[PushedUpdate], registry: Registry, now_ms: int, max_skew_ms: int
) -> tuple[list[FeatureUpdate], list[PushRefusal]]:
    """Every update validated; the refusals, by index, when any is not valid."""
    parsed, refused = [], []
    for index, update in enumerate(updates):
        try:
            group = registry.group(update.entity, update.group)
            parsed.append(
                parse_update(
                    group,
                    update.entity_id,
                    update.event_timestamp,
                    update.values,
                    now_ms=now_ms,
                    max_skew_ms=max_skew_ms,
                )
            )
        except InvalidUpdate as exc:
            refused.append(PushRefusal(index, update.entity_id, exc.field, str(exc)))
        except RegistryError as exc:
            refused.append(PushRefusal(index, update.entity_id, "group", f"group: {exc}"))
    return parsed, refused


async def write_pushed(
    parsed: Sequence[FeatureUpdate], store: AsyncOnlineStore, now_ms: int
) -> PushResult:
    """Write the live updates of ``parsed`` in one call to ``store``; account for each."""
    live = [i for i, u in enumerate(parsed) if is_live(u.group, u.event_ms, now_ms)]
    outcomes = await store.write([parsed[i] for i in live]) if live else []
    by_index = dict(zip(live, outcomes, strict=True))
    return PushResult(
        written=sum(outcome.applied for outcome in outcomes),
        stale=tuple(i for i, o in by_index.items() if not o.applied and o.refused is None),
        expired=tuple(i for i in range(len(parsed)) if i not in by_index),
        refused=tuple(
            PushRefusal(i, parsed[i].entity_id, "store", o.refused)
            for i, o in by_index.items()
            if o.refused is not None
        ),
    )
