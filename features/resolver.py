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
from typing import Any

from features.breaker import CircuitBreaker
from features.burst_log import BurstLog
from features.cache import FeatureCache, SingleFlight
from features.errors import StoreError
from features.keys import validate_entity_id
from features.registry import FeatureGroup, Registry
from features.stores.base import AsyncOnlineStore, ReadRequest, StoredValues
from features.timing import StageTimer

__all__ = ["CachedGroup", "EntityFeatures", "GroupResult", "Resolver", "Source", "Tier"]

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


_CacheKey = tuple[str, str, str, tuple[str, ...]]
"""(entity type, entity id, group, requested fields)."""

CachedGroup = tuple[tuple[Any, ...], tuple[str, ...]]
"""What the cache keeps of a group: its values in the key's field order, and the defaulted
names.  Tuples of numbers and strings, which the garbage collector stops tracking."""


@dataclass(frozen=True)
class Tier:
    """One store the resolver asks, in order, behind its own breaker."""

    source: Source
    store: AsyncOnlineStore
    breaker: CircuitBreaker
    saturated: Callable[[], bool] = lambda: False
    """True when the store should be spared (its pool over 80 % in use): trips the breaker."""


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What one fetch produced for one key: the caller's result and the cache's copy."""

    result: GroupResult
    cached: CachedGroup | None


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
        self._in_flight: SingleFlight[_Fetched] = SingleFlight()
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
        """Features of each entity, in the order of ``entity_ids``.

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
        results: list[GroupResult | None] = [None] * len(requests)
        misses: list[int] = []
        waits: list[tuple[int, Any]] = []
        with timer.stage("cache"):
            for index, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    results[index] = _from_cache(key, hit, Source.CACHE)
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
            for index, outcome in zip(misses, fetched, strict=True):
                results[index] = outcome.result
        for index, running in waits:
            # Shielded: a cancelled waiter must not cancel the fetch others share.
            results[index] = (await asyncio.shield(running)).result
        width = len(selection)
        return [
            EntityFeatures(
                entity_id,
                MappingProxyType(
                    {
                        group.name: _known(results[row * width + column])
                        for column, (group, _) in enumerate(selection)
                    }
                ),
            )
            for row, entity_id in enumerate(entity_ids)
        ]

    async def _fetch(
        self, requests: list[ReadRequest], keys: list[_CacheKey], timer: StageTimer
    ) -> list[_Fetched]:
        """Ask each tier for what is missing, then stale values or defaults; settle waiters."""
        outcomes: list[_Fetched | None] = [None] * len(requests)
        try:
            pending, failed = await self._ask_tiers(requests, outcomes, timer)
            for index in pending:
                outcomes[index] = _fallback(requests[index], keys[index], self._cache, failed)
            done = [_known_outcome(outcome) for outcome in outcomes]
            for key, outcome in zip(keys, done, strict=True):
                if outcome.cached is not None:
                    self._cache.put(key, outcome.cached)
            return done
        finally:
            # Waiters are released even when this task is cancelled mid-read.
            for request, key, maybe in zip(requests, keys, outcomes, strict=True):
                outcome = maybe or _Fetched(_fill(request, None, Source.DEFAULT), None)
                self._in_flight.settle(key, outcome)

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
                tier.breaker.trip("connection pool over 80 % in use")
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
                tier.breaker.record_failure(str(exc))
                self._error_log.error(f"{tier.source} read failed; falling back", exc)
                failed = True
                continue
            except TimeoutError:
                # Expiring late means the event loop was busy (a saturated worker), not
                # that the store was slow: falling back is right, blaming the store is not.
                if loop.time() - expires < self._loop_lag_s:
                    reason = f"no answer within the {self._deadline_s * 1000:g} ms deadline"
                    tier.breaker.record_failure(reason)
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


def _cache_key(request: ReadRequest) -> _CacheKey:
    group = request.group
    return (group.entity.name, request.entity_id, group.name, request.fields)


def _known(result: GroupResult | None) -> GroupResult:
    if result is None:  # every index is filled by a hit, a fetch or a wait
        raise AssertionError("unresolved feature group")
    return result


def _known_outcome(outcome: _Fetched | None) -> _Fetched:
    if outcome is None:  # every request gets a tier's answer or a fallback
        raise AssertionError("unresolved feature group")
    return outcome


def _from_store(request: ReadRequest, stored: StoredValues, source: Source) -> _Fetched:
    result = _fill(request, stored, source)
    return _Fetched(result, _compact(result))


def _compact(result: GroupResult) -> CachedGroup:
    return tuple(result.values.values()), result.defaulted


def _from_cache(
    key: _CacheKey, cached: CachedGroup, source: Source, age_s: float | None = None
) -> GroupResult:
    values, defaulted = cached
    return GroupResult(
        MappingProxyType(dict(zip(key[3], values, strict=True))), source, defaulted, age_s
    )


def _fallback(
    request: ReadRequest, key: _CacheKey, cache: FeatureCache[CachedGroup], failed: bool
) -> _Fetched:
    """No store had it: a recent stale value if a store failed, else the defaults."""
    if failed:
        known = cache.get_stale(key)
        if known is not None and known[1] <= request.group.freshness.total_seconds():
            value, age_s = known
            return _Fetched(_from_cache(key, value, Source.STALE, age_s), None)
        return _Fetched(_fill(request, None, Source.DEFAULT), None)
    # Every store answered that it holds nothing: remember that, briefly.
    result = _fill(request, None, Source.DEFAULT)
    return _Fetched(result, _compact(result))


def _fill(request: ReadRequest, stored: StoredValues | None, source: Source) -> GroupResult:
    """Every requested field: the stored value where valid, else the training default."""
    by_name = request.group.by_name
    if stored is None:
        values = {name: by_name[name].default for name in request.fields}
        return GroupResult(MappingProxyType(values), source, request.fields)
    values = {name: stored.get(name) for name in request.fields}
    if None not in values.values():
        return GroupResult(MappingProxyType(values), source, ())
    defaulted = tuple(name for name, value in values.items() if value is None)
    for name in defaulted:
        values[name] = by_name[name].default
    return GroupResult(MappingProxyType(values), source, defaulted)
