"""What every persistent backing store shares: the held form, the merge rule, the async facade.

A backing store (tier 3 of the read path) keeps one record per entity group,
keyed by the Redis key string (``features.keys.feature_key``): the values,
their event times, and the newest of those.  It answers ``read`` exactly as
the Redis store does for the same writes, so the resolver cannot tell them
apart, and it merges writes by Redis' rule (``held_after_write``, the same
rule as the scripts in ``redis_scripts``):

- hash: field by field, a value lands unless the field holds a newer one (an
  equal one is written again); fields the update lacks keep their values.
- string: the same, the vector replaced whole.
- sorted set: like ``ZADD GT``: members merge keeping the higher score, the
  newest ``top_n`` are kept.

A group whose newest event time is older than its TTL (``FeatureGroup.ttl``)
has expired: ``is_live`` is the one rule, live iff ``event_ms + ttl_ms >
now_ms``, with ``now_ms`` from the store's injectable clock (``time.time``
unless a test pins it).  Redis applies the same rule, ``PEXPIREAT`` the
newest event time plus the TTL.  An expired group counts as absent, as a key
Redis has expired: for reads (``read_held`` says ``None``, so the resolver
falls through to stale values and defaults) and for writes
(``held_after_write`` neither merges into it nor skips an update as older
than it).  Stores keep expired records until a write replaces them (or
DynamoDB's own TTL deletes them, see ``dynamodb``); ``scan`` yields them, and
``featserve rewarm`` skips them by the same rule.

Values are held in their normalized Python form (``HeldGroup``); each store
encodes that to its own storage form and passes what it reads back through
``checked_values``, which leaves out (and logs) values the registry no
longer accepts, as the Redis store does.  A record a store cannot decode at
all (``UnreadableRecord``) reads as absent and refuses writes to its key.

``AsyncBackingStore`` runs a blocking store on worker threads of its own,
so the event loop never waits on disk or on the network.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from features.burst_log import BurstLog
from features.errors import StoreUnavailable
from features.registry import FeatureGroup, Structure
from features.stores.base import (
    FeatureUpdate,
    ReadRequest,
    StoredRow,
    StoredValues,
    WriteOutcome,
    newest_members,
)
from features.timing import Stage, StageTimer

__all__ = [
    "AsyncBackingStore",
    "BackingStore",
    "Clock",
    "HeldGroup",
    "Merged",
    "UnreadableRecord",
    "as_held",
    "as_update",
    "checked_values",
    "entity_id_of",
    "epoch_ms",
    "expires_at_ms",
    "group_label",
    "held_after_write",
    "held_group",
    "is_live",
    "oldest_live_ms",
    "read_held",
    "unexpired",
]

_log = logging.getLogger(__name__)
_bad_value_log = BurstLog(_log)

_T = TypeVar("_T")

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


class UnreadableRecord(ValueError):
    """A stored record that cannot be decoded (not JSON, an event time that is no number, ...)."""


class BackingStore(Protocol):
    """A blocking persistent store: ``OnlineStore``'s contract plus a scan for rewarm."""

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """See ``OnlineStore.read``; an expired group reads as ``None`` (``read_held``)."""
        ...

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``; ``held_after_write`` is the merge rule."""
        ...

    def scan(self, group: FeatureGroup) -> Iterator[FeatureUpdate]:
        """Every entity group of ``group`` held, expired or not, each value at its event time.

        Records that cannot be decoded are logged and left out.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def group_label(group: FeatureGroup) -> str:
    """``entity:group``, the name a store files a record under for ``scan``."""
    return f"{group.entity.key_name}:{group.name}"


def entity_id_of(key: str, group: FeatureGroup) -> str:
    """The entity id inside ``key``, a ``feature_key`` of ``group``."""
    return key[len(group.entity.key_name) + 2 : -(len(group.name) + 2)]


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

    The backing tier's one expiry rule: live iff ``event_ms + ttl_ms > now_ms``.
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


def read_held(request: ReadRequest, held: HeldGroup | None, now_ms: int) -> StoredRow | None:
    """What the Redis store would return for ``request`` at ``now_ms`` if Redis held ``held``:
    the values and the event time Redis answers beside them (a hash's or a string's newest
    event time, a sorted set's highest score).

    ``None`` when ``held`` is ``None`` or has expired (``is_live``).
    """
    group = request.group
    held = unexpired(group, held, now_ms)
    if held is None:
        return None
    if group.structure is Structure.HASH:
        values = tuple(map(held.values.get, request.fields))
        if values.count(None) == len(values):
            return None
        return StoredRow(request.fields, values, held.event_ms)
    feature = group.features[0]
    if group.structure is Structure.SORTED_SET:
        members = tuple(newest_members(held.values, group.top_n or 1))
        if not members:
            return None
        return StoredRow((feature.name,), (members,), round(held.values[members[0]] * 1000))
    vector = held.values.get(feature.name)
    return None if vector is None else StoredRow((feature.name,), (vector,), held.event_ms)


def checked_values(group: FeatureGroup, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Normalized values from a store's decoded record; invalid ones are logged and left out.

    Numbers may come back as ``int``, ``float`` or ``Decimal``; a vector as a
    list of numbers or as the packed float32 bytes Redis keeps.
    """
    if group.structure is Structure.SORTED_SET:
        return _checked_members(group, stored)
    values: dict[str, Any] = {}
    for name, raw in stored.items():
        feature = group.by_name.get(name)
        if feature is None:
            continue
        try:
            if isinstance(raw, bytes):
                values[name] = feature.dtype.decode(raw, feature.dim)
            elif group.structure is Structure.HASH:
                values[name] = feature.dtype.decode(str(raw).encode(), feature.dim)
            else:
                values[name] = feature.dtype.normalize([float(item) for item in raw], feature.dim)
        except (TypeError, ValueError) as exc:
            _bad_value_log.error(f"ignoring a stored {group_label(group)}.{name} value", exc)
    return values


def _checked_members(group: FeatureGroup, stored: Mapping[str, Any]) -> dict[str, Any]:
    members: dict[str, float] = {}
    for member, raw in stored.items():
        try:
            members[member] = float(raw)
        except (TypeError, ValueError) as exc:
            _bad_value_log.error(f"ignoring a stored {group_label(group)} member", exc)
    return members


class AsyncBackingStore:
    """A blocking backing store run on worker threads of its own, for the event loop.

    ``open_store`` runs on a worker thread, so a store whose connection is
    bound to its thread (SQLite) is opened, used and closed on that one
    thread.  When ``max_pending`` calls are already waiting, a call fails at
    once with ``StoreUnavailable`` rather than queue behind them.
    """

    def __init__(
        self, open_store: Callable[[], BackingStore], workers: int = 1, max_pending: int = 64
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backing")
        self._max_pending = max_pending
        self._pending = 0
        try:
            self._store = self._executor.submit(open_store).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """See ``OnlineStore.read``; runs on the store's worker thread, timed here as ``backing``.

        The timer stays on the event loop's thread: a read the deadline abandoned
        may still finish on the worker later, and must not touch the request's
        timer while its response is being built.
        """
        if timer is None:
            return await self._run(self._store.read, requests, None)
        with timer.stage(Stage.BACKING):
            return await self._run(self._store.read, requests, None)

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``; runs on the store's worker thread."""
        return await self._run(self._store.write, updates)

    async def close(self) -> None:
        """Close the store on its thread, then stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
        self._executor.shutdown(wait=True)

    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        if self._pending >= self._max_pending:
            raise StoreUnavailable(f"the backing store has {self._pending} calls waiting already")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
        finally:
            self._pending -= 1
