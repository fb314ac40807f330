"""The seam between the resolver and any online store.

A store answers reads for many (entity, group) pairs at once and writes
rows with their TTL; the resolver never knows which store it talks to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from features.registry import FeatureGroup
from features.timing import StageTimer

__all__ = [
    "AsyncOnlineStore",
    "FailedRead",
    "FeatureUpdate",
    "OnlineStore",
    "ReadAnswer",
    "ReadRequest",
    "StoredRow",
    "StoredValues",
]

StoredValues = Mapping[str, Any]
"""The valid values a store found for one group, by feature name; absent names were not found."""


class StoredRow(Mapping[str, Any]):
    """Stored values as a tuple in the request's field order, ``None`` where not found.

    A ``StoredValues`` mapping to everyone else; the resolver takes ``in_order`` as
    it is, which saves it a lookup per field when a batch holds many entities.
    """

    __slots__ = ("fields", "in_order")

    def __init__(self, fields: tuple[str, ...], in_order: tuple[Any, ...]) -> None:
        self.fields = fields
        self.in_order = in_order

    def __getitem__(self, name: str) -> Any:
        try:
            value = self.in_order[self.fields.index(name)]
        except ValueError:
            raise KeyError(name) from None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        pairs = zip(self.fields, self.in_order, strict=True)
        return (name for name, value in pairs if value is not None)

    def __len__(self) -> int:
        return len(self.in_order) - self.in_order.count(None)

    def __repr__(self) -> str:
        return f"StoredRow({dict(self)!r})"


@dataclass(frozen=True, slots=True)
class FailedRead:
    """The store answered one request of a read with an error, e.g. Redis' ``WRONGTYPE``.

    Not "nothing stored": the store could not say what it holds for that key.
    """

    error: str
    """The store's own words, e.g. ``NOPERM No permissions to access a key``."""


ReadAnswer = StoredValues | FailedRead | None
"""One request's answer: its values, a ``FailedRead``, or ``None`` (nothing stored)."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``fields`` of ``group`` for one entity."""

    entity_id: str
    group: FeatureGroup
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FeatureUpdate:
    """A validated write of one entity's group as of an event time.

    Build it with ``features.ingest.updates.parse_update``.  For a hash group
    ``values`` maps feature names to values; for a sorted-set group it maps
    members to their scores (the event time in seconds); for a string group
    it maps the feature name to the vector.
    """

    entity_id: str
    group: FeatureGroup
    event_ms: int
    """When the values were true, epoch milliseconds; older writes never replace newer ones."""
    values: Mapping[str, Any]


class OnlineStore(Protocol):
    """A blocking store, for command-line tools and tests."""

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """Values for each request: a sequence of the same length and order as ``requests``.

        ``None`` means the entity has nothing stored for that group; a
        ``FailedRead`` that the store answered that one request with an error.
        Raises ``StoreError`` when the store cannot answer at all.
        """
        ...

    def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """Write each update with its group's TTL unless the store holds a newer event.

        Returns a list of the same length and order as ``updates``: True where
        applied, False where skipped because the store held a newer event.
        Raises ``StoreError`` on failure; updates written before it stay written.
        """
        ...


class AsyncOnlineStore(Protocol):
    """A store for the service's event loop; the same contract as ``OnlineStore.read``."""

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """See ``OnlineStore.read``."""
        ...

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """See ``OnlineStore.write``."""
        ...
