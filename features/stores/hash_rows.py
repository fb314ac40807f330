"""Many entities' values of one hash group, column by column: what materialization writes.

``HashRows`` holds, for E entities and the group's n fields in the table, each
value as the text Redis keeps (``""`` where the entity has no new value) and
its event time.  A store that can write them as columns
(``HashRowsStore``, the Redis stores) takes them whole; any other store gets
them as ``FeatureUpdate``s (``write_hash_rows``), with the same outcome.

The answer, ``HashRowsWritten``, says per entity and field whether the value
landed, and which entities the store refused (a data error, with the reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from features.registry import FeatureGroup
from features.stores.base import FeatureUpdate, OnlineStore

__all__ = ["HashRows", "HashRowsStore", "HashRowsWritten", "write_hash_rows"]


@dataclass(frozen=True)
class HashRows:
    """E entities' new values of ``fields`` of one hash group; see the module docstring."""

    group: FeatureGroup
    fields: tuple[str, ...]
    entity_ids: Sequence[str]
    texts: npt.NDArray[np.object_]
    """E x n values as the text Redis keeps (``dtype.encode``), ``""`` where absent."""
    present: npt.NDArray[np.bool_]
    """E x n: whether the entity has a new value for the field."""
    value_ms: npt.NDArray[np.int64]
    """E x n event times, epoch ms (the entity's ``event_ms`` where the value is absent)."""
    event_ms: npt.NDArray[np.int64]
    """Per entity, the newest event time of its values."""

    def __len__(self) -> int:
        return len(self.entity_ids)

    def updates(self) -> list[FeatureUpdate]:
        """The rows as one update per entity, values decoded to their normalized form."""
        features = [self.group.by_name[name] for name in self.fields]
        updates = []
        for index, entity_id in enumerate(self.entity_ids):
            newest = int(self.event_ms[index])
            values, older = {}, {}
            for column, feature in enumerate(features):
                if not self.present[index, column]:
                    continue
                text = self.texts[index, column]
                values[feature.name] = feature.dtype.decode(text.encode(), feature.dim)
                at = int(self.value_ms[index, column])
                if at != newest:
                    older[feature.name] = at
            updates.append(FeatureUpdate(entity_id, self.group, newest, values, older))
        return updates


@dataclass(frozen=True)
class HashRowsWritten:
    """What became of ``HashRows``: E x n ``landed`` flags, and the entities refused."""

    landed: npt.NDArray[np.bool_]
    refused: Mapping[int, str]
    """Entity index -> why the store refused its write (nothing of it landed)."""


@runtime_checkable
class HashRowsStore(Protocol):
    """A store that writes ``HashRows`` as they are, without an update per entity."""

    def write_hash_rows(self, rows: HashRows) -> HashRowsWritten:
        """Write ``rows`` by ``OnlineStore.write``'s rules; raises ``StoreError`` likewise."""
        ...


def write_hash_rows(store: OnlineStore, rows: HashRows) -> HashRowsWritten:
    """Write ``rows`` into ``store``: whole when it can take them, else an update per entity."""
    if isinstance(store, HashRowsStore):
        return store.write_hash_rows(rows)
    outcomes = store.write(rows.updates())
    landed = np.zeros((len(rows), len(rows.fields)), dtype=np.bool_)
    refused: dict[int, str] = {}
    for index, outcome in enumerate(outcomes):
        if outcome.refused is not None:
            refused[index] = outcome.refused
        for column, name in enumerate(rows.fields):
            landed[index, column] = name in outcome.landed
    return HashRowsWritten(landed, refused)
