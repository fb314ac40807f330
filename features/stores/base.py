"""The seam between the resolver and any online store.

A store answers reads for many (entity, group) pairs at once and writes
rows with their TTL; the resolver never knows which store it talks to.

A read answers every request, or raises ``StoreError`` for all of them.  A
request the store could not answer on its own is answered ``FailedRead``:
the store answered that key with an error (any store), or, in a store spread
over several servers (Redis Cluster), the server holding the key failed while
the others answered, so that only that server's entities fall back.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from features.registry import FeatureGroup
from features.sources import Degraded
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
    "WriteOutcome",
    "event_ms_of",
    "newest_members",
]

StoredValues = Mapping[str, Any]
"""The valid values a store found for one group, by feature name; absent names were not found."""


class StoredRow(Mapping[str, Any]):
    """Stored values as a tuple in the request's field order, ``None`` where not found,
    and the event time the store keeps for them.

    A ``StoredValues`` mapping to everyone else (``event_ms`` takes no part in
    comparing it); the resolver takes ``in_order`` as it is, which saves it a
    lookup per field when a batch holds many entities.
    """

    __slots__ = ("event_ms", "fields", "in_order")

    def __init__(
        self, fields: tuple[str, ...], in_order: tuple[Any, ...], event_ms: int | None = None
    ) -> None:
        self.fields = fields
        self.in_order = in_order
        self.event_ms = event_ms
        """The group's newest event time (epoch ms), read in the same command as the values:
        a hash's ``_event_ms``, a sorted set's highest score, a string's sibling key.
        ``None`` when the store keeps none (a key written by hand without ``_event_ms``)."""

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
        return f"StoredRow({dict(self)!r}, event_ms={self.event_ms!r})"


def event_ms_of(answer: object) -> int | None:
    """The event time a store's answer carries (``StoredRow.event_ms``), if any."""
    return answer.event_ms if type(answer) is StoredRow else None


@dataclass(frozen=True, slots=True)
class FailedRead:
    """The store could not answer one request of a read; its other requests stand.

    Not "nothing stored": the store could not say what it holds for that key.  ``reason``:

    - ``error_reply``: the store answered the key with an error that speaks of the store
      (Redis' ``NOPERM``, ``LOADING``...).  Any store may answer this.
    - ``bad_value``: the key holds what its declaration cannot (``features.sources.Degraded``).
      Any store may answer this; it speaks of the key alone.
    - ``store_error``, ``deadline``, ``breaker_open``: the server that holds the key
      failed (refused or dropped the connection, or the cluster refused the slot), did
      not answer in time, or failed recently and was not asked.  Only a store spread over
      several servers answers these (Redis Cluster: one node down costs only its own
      entities); it keeps a breaker per server for them.
    """

    error: str
    """What went wrong, for the log: the store's own words (e.g. ``NOPERM No permissions to
    access a key``), which may name hosts and keys."""
    reason: Degraded = Degraded.ERROR_REPLY
    """Why, as the degraded-answer reason of the key's group."""

    @property
    def server_failed(self) -> bool:
        """Whether the key's server failed, rather than answering for the key."""
        return self.reason not in (Degraded.ERROR_REPLY, Degraded.BAD_VALUE)


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

    Values of one update may carry different event times: rows merged field by
    field (``materialize``), or a group read back from a backing store.
    ``event_ms`` is the newest; ``value_ms`` holds the event time of each hash
    value whose time differs from it (``ms_of`` reads either).
    """

    entity_id: str
    group: FeatureGroup
    event_ms: int
    """When the values were true, epoch milliseconds (the newest, when they differ)."""
    values: Mapping[str, Any]
    value_ms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Hash groups: the event time of each value older than ``event_ms``; others are at it."""

    def ms_of(self, name: str) -> int:
        """The event time of the value ``name`` (a hash field; for other groups ``event_ms``)."""
        return self.value_ms.get(name, self.event_ms)


def newest_members(members: Mapping[str, float], top_n: int) -> list[str]:
    """The ``top_n`` members with the highest scores, highest first; ties by member, descending,
    as ``ZREVRANGE`` orders them."""
    return heapq.nlargest(top_n, members, key=lambda member: (members[member], member))


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What became of one update in one store.

    ``landed`` names what the store now holds from the update: hash fields,
    sorted-set members, the string group's feature.  A name is left out when the
    store held something newer for it (or, for a member, kept newer members
    instead).  Nothing landed and ``refused`` unset: the update was stale as a
    whole.  ``refused`` is set when the store cannot take this update whatever
    the retries (a key of another type, a value out of the store's range, an
    oversize item): a data error, reported with the update, not raised.
    """

    landed: frozenset[str] = frozenset()
    refused: str | None = None
    """Why the store refused the update; ``None`` when it took it (or found it stale)."""

    @property
    def applied(self) -> bool:
        """Whether anything of the update landed."""
        return bool(self.landed)


class OnlineStore(Protocol):
    """A blocking store, for command-line tools and tests."""

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """Values for each request: a sequence of the same length and order as ``requests``.

        ``None`` means the entity has nothing stored for that group; a
        ``FailedRead`` that the store could not answer that one request (see
        ``FailedRead.reason``).  Raises ``StoreError`` when the store cannot
        answer at all.
        """
        ...

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """Write each update, value by value, with TTL counted from the event time.

        A value lands unless the store holds a newer event for it (an equal one is
        written again).  Returns a list of the same length and order as
        ``updates``; a data error refuses its own update only (``WriteOutcome``).
        Raises ``StoreError`` when the store cannot be written at all (unreachable,
        timed out, failing over); updates written before it stay written, and
        writing them again is safe.
        """
        ...


class AsyncOnlineStore(Protocol):
    """A store for the service's event loop; the same contract as ``OnlineStore``."""

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """See ``OnlineStore.read``."""
        ...

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``."""
        ...
