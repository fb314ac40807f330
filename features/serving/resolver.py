"""The resolver: cache, then each store in turn for what is still missing, then defaults.

For each (entity, group) the result holds every requested feature, cast to
its declared type, and says where the values came from:

- ``cache``: the in-process cache answered; no store was asked.
- ``redis``: Redis held the group (one pipelined round trip for all misses).
- ``backing``: Redis lacked it or failed, and the backing store held it.
- ``stale``: the stores failed; the last value this process saw, younger
  than the group's freshness window, with its age.
- ``default``: nobody holds the entity, or everything failed: the training
  defaults.

Fields a store lacked are filled from the defaults and listed in
``defaulted``.  Each store sits behind a circuit breaker; the whole fetch
runs under one deadline (``deadline_s``), and when it passes the resolver
answers with what it has.  A store error never escapes ``resolve``; it is
logged once per burst.  Stage times go into the caller's ``StageTimer``:
``cache``, then whatever the stores record (``redis``, ``decode``, ...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, cast

from features.burst_log import BurstLog
from features.errors import StoreError
from features.keys import validate_entity_id
from features.registry import FeatureGroup, Registry
from features.serving.breaker import CircuitBreaker
from features.serving.cache import FeatureCache, SingleFlight
from features.stores.base import AsyncOnlineStore, ReadRequest, StoredRow, StoredValues
from features.timing import StageTimer

__all__ = [
    "CachedGroup",
    "EntityFeatures",
    "GroupResult",
    "ResolvedBatch",
    "ResolvedGroup",
    "Resolver",
    "Source",
    "Tier",
]

_log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 0.010
"""The feature budget of the fraud profile: 10 ms."""

LOOP_LAG_S = 0.002
"""A deadline that fires later than this was held up by a busy event loop, not by the store."""

TIMER_SLACK_S = 0.002
"""How much earlier than the deadline a store read is abandoned: event-loop timers (libuv's
under uvloop) have millisecond resolution and fire up to about 1 ms late, and a timer due
while another request's Python code runs waits for it (about 0.5 ms per /score request).
With 1 ms, 3 of 15 fault-drill phases had a feature stage more than 2 ms past a 10 ms
deadline (``make faults``); with 2 ms the store still gets 80 % of that budget.  Short
deadlines give up at most ``SLACK_SHARE`` of themselves instead (ads: 0.6 ms of 3 ms)."""

SLACK_SHARE = 0.2
"""The largest share of the deadline kept back as ``TIMER_SLACK_S``."""


class Source(StrEnum):
    """Where a group's values came from."""

    CACHE = "cache"
    REDIS = "redis"
    BACKING = "backing"
    STALE = "stale"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class GroupResult:
    """One entity's values for one group."""

    values: Mapping[str, Any]
    """Every requested feature, by name, in request order."""
    source: Source
    defaulted: tuple[str, ...]
    """Features filled from training defaults (absent, invalid, or the store failed)."""
    age_s: float | None = None
    """For ``stale`` results: seconds since the values were read from a store."""


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """Everything resolved for one entity, by group name."""

    entity_id: str
    groups: Mapping[str, GroupResult]


CachedGroup = tuple[tuple[Any, ...], tuple[str, ...]]
"""What the cache keeps of a group: its values in the key's field order, and the defaulted
names.  Tuples of numbers and strings, which the garbage collector stops tracking."""


@dataclass(frozen=True, slots=True)
class ResolvedGroup:
    """One feature group of every entity in a batch: item ``i`` belongs to entity ``i``.

    Kept as parallel tuples, not an object per entity: scoring turns ``values`` into
    model columns with one ``zip``, and a batch of 100 builds no per-entity objects.
    """

    group: FeatureGroup
    fields: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    """Per entity: every requested feature in ``fields`` order, defaults filled in."""
    defaulted: tuple[tuple[str, ...], ...]
    sources: tuple[Source, ...]
    stale_ages_s: tuple[float | None, ...]
    """Per entity: for ``stale`` values, seconds since they were read from a store."""

    def columns(self) -> dict[str, tuple[Any, ...]]:
        """Each field's values across the batch, by name."""
        if not self.values:
            return dict.fromkeys(self.fields, ())
        return dict(zip(self.fields, zip(*self.values, strict=True), strict=True))

    def result(self, row: int) -> GroupResult:
        """Entity ``row``'s values as a ``GroupResult``."""
        values = MappingProxyType(dict(zip(self.fields, self.values[row], strict=True)))
        return GroupResult(values, self.sources[row], self.defaulted[row], self.stale_ages_s[row])


@dataclass(frozen=True, slots=True)
class ResolvedBatch:
    """What ``Resolver.resolve_batch`` found: every selected group of every entity."""

    entity_ids: tuple[str, ...]
    groups: tuple[ResolvedGroup, ...]

    def entities(self) -> list[EntityFeatures]:
        """The same values, one ``EntityFeatures`` per entity."""
        return [
            EntityFeatures(
                entity_id,
                MappingProxyType({group.group.name: group.result(row) for group in self.groups}),
            )
            for row, entity_id in enumerate(self.entity_ids)
        ]


_CacheKey = tuple[str, str, str, tuple[str, ...]]
"""(entity type, entity id, group, requested fields)."""

_Slot = tuple[tuple[Any, ...], tuple[str, ...], Source, float | None]
"""One (entity, group) while resolving: values, defaulted names, source, stale age."""

_Fetched = tuple[_Slot, bool]
"""What one fetch produced for one key, and whether the cache should keep it."""

_FROM_CACHE = (Source.CACHE, None)


@dataclass(frozen=True)
class Tier:
    """One store the resolver asks, in order, behind its own breaker."""

    source: Source
    store: AsyncOnlineStore
    breaker: CircuitBreaker
    saturated: Callable[[], bool] = lambda: False
    """True when the store should be spared (its pool over 80 % in use): trips the breaker."""


class Resolver:
    """Resolves feature groups of many entities: one round trip per store, on a deadline."""

    def __init__(
        self,
        registry: Registry,
        tiers: Sequence[Tier],
        cache: FeatureCache[CachedGroup],
        deadline_s: float = DEFAULT_DEADLINE_S,
        error_log: BurstLog | None = None,
        loop_lag_s: float = LOOP_LAG_S,
    ) -> None:
        self._registry = registry
        self._tiers = tuple(tiers)
        self._cache = cache
        self._deadline_s = deadline_s
        self._slack_s = min(TIMER_SLACK_S, deadline_s * SLACK_SHARE)
        self._loop_lag_s = loop_lag_s
        self._in_flight: SingleFlight[_Slot] = SingleFlight()
        self._error_log = error_log or BurstLog(_log)

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The stores asked, in order."""
        return self._tiers

    def selection(
        self, entity_type: str, groups: Sequence[str] | None = None
    ) -> tuple[tuple[FeatureGroup, tuple[str, ...]], ...]:
        """The (group, fields) pairs to resolve: the named groups, or all of the entity's."""
        chosen = (
            self._registry.groups_of(entity_type)
            if groups is None
            else tuple(self._registry.group(entity_type, name) for name in groups)
        )
        return tuple((group, group.feature_names) for group in chosen)

    def forget(self, entity_id: str, group: FeatureGroup) -> None:
        """Drop this process's cached values of one entity group, e.g. after writing it.

        Other processes keep theirs until the cache TTL ends.
        """
        self._cache.discard((group.entity.name, entity_id, group.name, group.feature_names))

    async def resolve(
        self,
        entity_ids: Sequence[str],
        selection: Sequence[tuple[FeatureGroup, tuple[str, ...]]],
        timer: StageTimer | None = None,
    ) -> list[EntityFeatures]:
        """Features of each entity, in the order of ``entity_ids``; see ``resolve_batch``."""
        return (await self.resolve_batch(entity_ids, selection, timer)).entities()

    async def resolve_batch(
        self,
        entity_ids: Sequence[str],
        selection: Sequence[tuple[FeatureGroup, tuple[str, ...]]],
        timer: StageTimer | None = None,
    ) -> ResolvedBatch:
        """Features of each entity, group by group, in the order of ``entity_ids``.

        ``selection`` comes from ``selection()``; build it once and reuse it.
        Ids are validated first (``InvalidEntityId``); store errors are
        absorbed into ``default`` sources.
        """
        timer = timer or StageTimer()
        requests = [
            ReadRequest(entity_id, group, fields)
            for entity_id in map(validate_entity_id, entity_ids)
            for group, fields in selection
        ]
        keys = [_cache_key(request) for request in requests]
        slots: list[_Slot | None] = [None] * len(requests)
        misses: list[int] = []
        waits: list[tuple[int, asyncio.Future[_Slot]]] = []
        with timer.stage("cache"):
            for index, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    slots[index] = hit + _FROM_CACHE
                    continue
                running = self._in_flight.join(key)
                if running is not None:
                    waits.append((index, running))
                else:
                    self._in_flight.lead(key)
                    misses.append(index)
        if misses:
            fetched = await self._fetch(
                [requests[i] for i in misses], [keys[i] for i in misses], timer
            )
            for index, slot in zip(misses, fetched, strict=True):
                slots[index] = slot
        for index, running in waits:
            # Shielded: a cancelled waiter must not cancel the fetch others share.
            slots[index] = await asyncio.shield(running)
        if None in slots:  # every index is filled by a hit, a fetch or a wait
            raise AssertionError("unresolved feature group")
        width = len(selection)
        return ResolvedBatch(
            tuple(entity_ids),
            tuple(
                _resolved_group(group, fields, cast(list[_Slot], slots[column::width]))
                for column, (group, fields) in enumerate(selection)
            ),
        )

    async def _fetch(
        self, requests: list[ReadRequest], keys: list[_CacheKey], timer: StageTimer
    ) -> list[_Slot]:
        """Ask each tier for what is missing, then stale values or defaults; settle waiters."""
        outcomes: list[_Fetched | None] = [None] * len(requests)
        try:
            pending, failed = await self._ask_tiers(requests, outcomes, timer)
            for index in pending:
                outcomes[index] = _fallback(requests[index], keys[index], self._cache, failed)
            if None in outcomes:  # every request gets a tier's answer or a fallback
                raise AssertionError("unresolved feature group")
            done = cast(list[_Fetched], outcomes)
            for key, (slot, keep) in zip(keys, done, strict=True):
                if keep:
                    self._cache.put(key, slot[:2])
            return [slot for slot, _ in done]
        finally:
            # Waiters are released even when this task is cancelled mid-read.
            for request, key, maybe in zip(requests, keys, outcomes, strict=True):
                slot = _defaults(request) if maybe is None else maybe[0]
                self._in_flight.settle(key, slot)

    async def _ask_tiers(
        self, requests: list[ReadRequest], outcomes: list[_Fetched | None], timer: StageTimer
    ) -> tuple[list[int], bool]:
        """Fill ``outcomes`` from the stores; return what is missing and whether a store failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s
        pending = list(range(len(requests)))
        failed = False
        for tier in self._tiers:
            if not pending:
                break
            if tier.saturated():
                tier.breaker.trip("pool_saturated")
            remaining = deadline - loop.time() - self._slack_s
            if remaining <= 0 or not tier.breaker.allow():
                failed = True
                continue
            batch = [requests[index] for index in pending]
            expires = loop.time() + remaining
            try:
                async with asyncio.timeout_at(expires):
                    stored = await tier.store.read(batch, timer)
            except StoreError as exc:
                tier.breaker.record_failure(exc.reason)
                self._error_log.error(f"{tier.source} read failed; falling back", exc)
                failed = True
                continue
            except TimeoutError:
                # Expiring late means the event loop was busy (a saturated worker), not
                # that the store was slow: falling back is right, blaming the store is not.
                if loop.time() - expires < self._loop_lag_s:
                    tier.breaker.record_failure("deadline")
                    self._error_log.error(f"{tier.source} read missed the deadline; falling back")
                failed = True
                continue
            tier.breaker.record_success()
            still_missing = []
            for index, values in zip(pending, stored, strict=True):
                if values is None:
                    still_missing.append(index)
                else:
                    outcomes[index] = _from_store(requests[index], values, tier.source)
            pending = still_missing
        return pending, failed


def _resolved_group(
    group: FeatureGroup, fields: tuple[str, ...], slots: list[_Slot]
) -> ResolvedGroup:
    """The group's slots, one per entity, turned into parallel tuples."""
    values, defaulted, sources, ages = tuple(zip(*slots, strict=True)) or ((), (), (), ())
    return ResolvedGroup(group, fields, values, defaulted, sources, ages)


def _cache_key(request: ReadRequest) -> _CacheKey:
    group = request.group
    return (group.entity.name, request.entity_id, group.name, request.fields)


def _defaults(request: ReadRequest) -> _Slot:
    """Every requested field at its training default."""
    by_name = request.group.by_name
    values = tuple(by_name[name].default for name in request.fields)
    return values, request.fields, Source.DEFAULT, None


def _fallback(
    request: ReadRequest, key: _CacheKey, cache: FeatureCache[CachedGroup], failed: bool
) -> _Fetched:
    """No store had it: a recent stale value if a store failed, else the defaults."""
    if failed:
        known = cache.get_stale(key)
        if known is not None and known[1] <= request.group.freshness.total_seconds():
            (values, defaulted), age_s = known
            return (values, defaulted, Source.STALE, age_s), False
        return _defaults(request), False
    # Every store answered that it holds nothing: remember that, briefly.
    return _defaults(request), True


def _from_store(request: ReadRequest, stored: StoredValues, source: Source) -> _Fetched:
    """Every requested field: the stored value where valid, else the training default."""
    fields = request.fields
    if type(stored) is StoredRow and stored.fields == fields:
        values = stored.in_order
    else:
        values = tuple(map(stored.get, fields))
    if None not in values:
        return (values, (), source, None), True
    by_name = request.group.by_name
    defaulted = tuple(name for name, value in zip(fields, values, strict=True) if value is None)
    filled = tuple(
        by_name[name].default if value is None else value
        for name, value in zip(fields, values, strict=True)
    )
    return (filled, defaulted, source, None), True
