"""The resolver: cache, then one store round trip for every miss, then defaults.

For each (entity, group) the result holds every requested feature, cast to
its declared type, and says where the values came from:

- ``cache``: the in-process cache answered; Redis was not asked.
- ``redis``: Redis held the group; fields it lacked are filled from the
  training defaults and listed in ``defaulted``.
- ``default``: Redis holds nothing for the entity, or Redis failed; every
  value is the training default.

A store error never escapes ``resolve``: the call answers from cache and
defaults, and the error is logged once per burst.  Stage times go into the
caller's ``StageTimer``: ``cache`` (lookups), ``redis`` (the round trip) and
``decode``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from features.burst_log import BurstLog
from features.cache import FeatureCache, SingleFlight
from features.errors import StoreError
from features.keys import validate_entity_id
from features.registry import FeatureGroup, Registry
from features.stores.base import AsyncOnlineStore, ReadRequest, StoredValues
from features.timing import StageTimer

__all__ = ["EntityFeatures", "GroupResult", "Resolver", "Source"]

_log = logging.getLogger(__name__)


class Source(StrEnum):
    """Where a group's values came from."""

    CACHE = "cache"
    REDIS = "redis"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class GroupResult:
    """One entity's values for one group."""

    values: Mapping[str, Any]
    """Every requested feature, by name, in request order."""
    source: Source
    defaulted: tuple[str, ...]
    """Features filled from training defaults (absent, invalid, or the store failed)."""


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """Everything resolved for one entity, by group name."""

    entity_id: str
    groups: Mapping[str, GroupResult]


_CacheKey = tuple[str, str, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What one fetch produced for one key: the caller's result and the cache's copy."""

    result: GroupResult
    cached: GroupResult | None


class Resolver:
    """Resolves feature groups for many entities with at most one store round trip."""

    def __init__(
        self,
        registry: Registry,
        store: AsyncOnlineStore,
        cache: FeatureCache[GroupResult],
        error_log: BurstLog | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._cache = cache
        self._in_flight: SingleFlight[_Fetched] = SingleFlight()
        self._error_log = error_log or BurstLog(_log)

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
            ReadRequest(validate_entity_id(entity_id), group, fields)
            for entity_id in entity_ids
            for group, fields in selection
        ]
        results: list[GroupResult | None] = [None] * len(requests)
        misses: list[int] = []
        waits: list[tuple[int, Any]] = []
        with timer.stage("cache"):
            for index, request in enumerate(requests):
                key = _cache_key(request)
                hit = self._cache.get(key)
                if hit is not None:
                    results[index] = hit
                    continue
                running = self._in_flight.join(key)
                if running is not None:
                    waits.append((index, running))
                else:
                    self._in_flight.lead(key)
                    misses.append(index)
        if misses:
            fetched = await self._fetch([requests[i] for i in misses], timer)
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

    async def _fetch(self, requests: list[ReadRequest], timer: StageTimer) -> list[_Fetched]:
        """Read ``requests`` in one round trip, fill defaults, cache, and settle waiters."""
        outcomes: list[_Fetched] | None = None
        try:
            try:
                stored = await self._store.read(requests, timer)
            except StoreError as exc:
                self._error_log.error("online store read failed; serving defaults", exc)
                outcomes = [
                    _Fetched(_fill(request, None, Source.DEFAULT), None) for request in requests
                ]
            else:
                outcomes = [
                    _from_store(request, values)
                    for request, values in zip(requests, stored, strict=True)
                ]
                for request, outcome in zip(requests, outcomes, strict=True):
                    if outcome.cached is not None:
                        self._cache.put(_cache_key(request), outcome.cached)
            return outcomes
        finally:
            # Waiters are released even when this task is cancelled mid-read.
            for index, request in enumerate(requests):
                outcome = (
                    outcomes[index]
                    if outcomes is not None
                    else _Fetched(_fill(request, None, Source.DEFAULT), None)
                )
                self._in_flight.settle(_cache_key(request), outcome)


def _cache_key(request: ReadRequest) -> _CacheKey:
    group = request.group
    return (group.entity.name, request.entity_id, group.name, request.fields)


def _known(result: GroupResult | None) -> GroupResult:
    if result is None:  # every index is filled by a hit, a fetch or a wait
        raise AssertionError("unresolved feature group")
    return result


def _from_store(request: ReadRequest, stored: StoredValues | None) -> _Fetched:
    if stored is None:
        result = _fill(request, None, Source.DEFAULT)
    else:
        result = _fill(request, stored, Source.REDIS)
    return _Fetched(result, GroupResult(result.values, Source.CACHE, result.defaulted))


def _fill(request: ReadRequest, stored: StoredValues | None, source: Source) -> GroupResult:
    """Every requested field: the stored value where valid, else the training default."""
    by_name = request.group.by_name
    if stored is None:
        values = {name: by_name[name].default for name in request.fields}
        return GroupResult(MappingProxyType(values), source, request.fields)
    values = {}
    defaulted = []
    for name in request.fields:
        value = stored.get(name)
        if value is None:
            value = by_name[name].default
            defaulted.append(name)
        values[name] = value
    return GroupResult(MappingProxyType(values), source, tuple(defaulted))
