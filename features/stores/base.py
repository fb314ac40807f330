"""The seam between the resolver and any online store.

A store answers reads for many (entity, group) pairs at once and writes
rows with their TTL; the resolver never knows which store it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from features.registry import FeatureGroup
from features.timing import StageTimer

__all__ = ["AsyncOnlineStore", "OnlineStore", "ReadRequest", "StoredValues", "WriteRow"]

StoredValues = Mapping[str, Any]
"""The valid values a store found for one group, by feature name; absent names were not found."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``fields`` of ``group`` for one entity."""

    entity_id: str
    group: FeatureGroup
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WriteRow:
    """Values of one entity's group to write.

    For hash groups ``values`` maps feature names to values; for a sorted-set
    group it maps the feature name to ``{member: score}``; for a string group
    it maps the feature name to the vector.
    """

    entity_id: str
    group: FeatureGroup
    values: Mapping[str, Any]


class OnlineStore(Protocol):
    """A blocking store, for command-line tools and tests."""

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request: a list of the same length and order as ``requests``.

        ``None`` means the entity has nothing stored for that group.  Raises
        ``StoreError`` when the store cannot answer at all.
        """
        ...

    def write(self, rows: Sequence[WriteRow]) -> None:
        """Write every row and its group's TTL; raises ``StoreError`` on failure."""
        ...


class AsyncOnlineStore(Protocol):
    """A store for the service's event loop; the same contract as ``OnlineStore.read``."""

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """See ``OnlineStore.read``."""
        ...
