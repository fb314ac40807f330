"""The resolver: cache, then each store in turn for what is still missing, then defaults.

For each (entity, group) the result holds every requested feature, cast to
its declared type, and says where the values came from, a
``features.sources.Source`` (defined there, with ``Degraded``): the cache,
else the stores in turn (one pipelined round trip each for all misses), else
the last values this process read, younger than the group's freshness window
(with their age), else the training defaults.

When a fault shaped the answer the group also carries a ``Degraded`` reason:
the first failure met on the way.  A store may fail some keys of a read only
(``FailedRead``): a key answered with an error, a key that holds a bad value,
or, on a Redis Cluster, the keys of a node that is down, too slow or skipped
by its own breaker; only those groups fall back, with the reason the store
gave.  A bad value never counts against a breaker.  Only answers no fault
shaped are cached.

Each group also carries its event time (``event_ms``: the newest of its
values, as the store answered it in the same command as the values), kept
through the cache and the stale values, so the caller knows how old what it
serves is (``ResolvedGroup.ages_s``); ``None`` for defaults and for keys that
keep no event time.

Fields a store lacked are filled from the defaults and listed in
``defaulted``.  Each store sits behind a circuit breaker.  The stores share
one deadline (``deadline_s``, less ``TIMER_SLACK_S``) that starts when the
resolver sends its first store read, after the cache lookups; it bounds how
long the resolver waits for replies, and a reply that has reached the worker
by then is used however late the worker gets to it (``features.deadline``).
A store error never escapes ``resolve``; it is logged once per burst, with
the error.  Stage times go into the caller's ``StageTimer``: ``cache``, then
whatever the stores record (``redis``, ``decode``, ...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from features.breaker import CircuitBreaker
from features.burst_log import BurstLog
from features.deadline import ReplyDeadline
from features.errors import StoreError
from features.keys import validate_entity_id
from features.registry import FeatureGroup, Registry
from features.serving.cache import FeatureCache, SingleFlight
from features.sources import Degraded, Source
from features.stores.base import (
    AsyncOnlineStore,
    FailedRead,
    ReadAnswer,
    ReadRequest,
    StoredRow,
    StoredValues,
    event_ms_of,
)
from features.timing import Stage, StageTimer

__all__ = [
    "CachedGroup",
    "EntityFeatures",
    "GroupResult",
    "ResolvedBatch",
    "ResolvedGroup",
    "Resolver",
    "Selection",
    "Tier",
]

_log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 0.010
"""The feature budget of the payments profile (``features.budgets``), the strictest but ads'."""

TIMER_SLACK_S = 0.002
"""How much earlier than the deadline a store read is abandoned: event-loop timers (libuv's
under uvloop) have millisecond resolution and fire late, and a timer due while another
request's Python code runs waits for it.  Half as much let fault-drill phases end well past
the deadline (``make faults``; docs/benchmarks.md has the figures).  Short deadlines give up
at most ``SLACK_SHARE`` of themselves instead, so the store keeps most of its budget."""

SLACK_SHARE = 0.2
"""The largest share of the deadline kept back as ``TIMER_SLACK_S``."""


@dataclass(frozen=True, slots=True)
class GroupResult:
    """One entity's values for one group."""

    values: Mapping[str, Any]
    """Every requested feature, by name, in request order."""
    source: Source
    defaulted: tuple[str, ...]
    """Features filled from training defaults (absent, invalid, or the store failed)."""
    stale_age_s: float | None = None
    """For ``stale`` results: seconds since the values were read from a store."""
    degraded: Degraded | None = None
    """Why a fault shaped this answer; ``None`` when none did."""
    event_ms: int | None = None
    """The values' event time, epoch ms: the newest of the group's values as the store
    answered it (``StoredRow.event_ms``), kept through the cache and stale values.  ``None``
    for defaults and for a key that keeps no event time (written by hand)."""

    def age_s(self, now_s: float) -> float | None:
        """How old the values are at ``now_s`` (epoch seconds), or ``None`` when unknown."""
        return None if self.event_ms is None else _age_s(self.event_ms, now_s)


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """Everything resolved for one entity, by group name."""

    entity_id: str
    groups: Mapping[str, GroupResult]


CachedGroup = tuple[tuple[Any, ...], tuple[str, ...], int | None]
"""What the cache keeps of a group: its values in the key's field order, the defaulted
names and the values' event time (epoch ms).  Tuples of numbers and strings, which the
garbage collector stops tracking."""


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
    event_ms: tuple[int | None, ...]
    """Per entity: the values' event time, epoch ms (``GroupResult.event_ms``)."""
    sources: tuple[Source, ...]
    stale_ages_s: tuple[float | None, ...]
    """Per entity: for ``stale`` values, seconds since they were read from a store."""
    degraded: tuple[Degraded | None, ...]
    """Per entity: why a fault shaped the answer, or ``None``."""

    def columns(self) -> dict[str, tuple[Any, ...]]:
        """Each field's values across the batch, by name."""
        if not self.values:
            return dict.fromkeys(self.fields, ())
        return dict(zip(self.fields, zip(*self.values, strict=True), strict=True))

    def ages_s(self, now_s: float) -> tuple[float | None, ...]:
        """Per entity: how old the values are at ``now_s`` (epoch seconds), ``None`` when
        unknown; an event time ahead of ``now_s`` (a producer's clock ahead) counts as 0."""
        return tuple(None if at is None else _age_s(at, now_s) for at in self.event_ms)

    def result(self, row: int) -> GroupResult:
        """Entity ``row``'s values as a ``GroupResult``."""
        values = MappingProxyType(dict(zip(self.fields, self.values[row], strict=True)))
        return GroupResult(
            values,
            self.sources[row],
            self.defaulted[row],
            self.stale_ages_s[row],
            self.degraded[row],
            self.event_ms[row],
        )


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


Selection = Sequence[tuple[FeatureGroup, tuple[str, ...]]]
"""The (group, fields) pairs to resolve for each entity of a part (``Resolver.selection``)."""

_CacheKey = tuple[str, str, str, tuple[str, ...]]
"""(entity type, entity id, group, requested fields)."""

_Slot = tuple[tuple[Any, ...], tuple[str, ...], int | None, Source, float | None, Degraded | None]
"""One (entity, group) while resolving: values, defaulted names, event time (ms), source,
stale age, and why a fault shaped it.  Only slots with no such reason are cached, as their
first three items (``CachedGroup``)."""

_FROM_CACHE = (Source.CACHE, None, None)


@dataclass(frozen=True)
class Tier:
    """One store the resolver asks, in order, behind its own breaker."""

    source: Source
    store: AsyncOnlineStore
    breaker: CircuitBreaker
    saturated: Callable[[], bool] = lambda: False
    """True when the store should be spared (more of its pool in use than the breaker's pool
    setting allows): trips the breaker."""


@dataclass(frozen=True, slots=True)
class _TierAnswer:
    """One tier's answers to a read, or why it gave none."""

    answers: Sequence[ReadAnswer] | None
    failure: Degraded | None


class Resolver:
    """Resolves feature groups of many entities: one round trip per store, on a deadline."""

    def __init__(
        self,
        registry: Registry,
        tiers: Sequence[Tier],
        cache: FeatureCache[CachedGroup],
        deadline_s: float = DEFAULT_DEADLINE_S,
        error_log: BurstLog | None = None,
    ) -> None:
        self._registry = registry
        self._tiers = tuple(tiers)
        self._cache = cache
        self._deadline_s = deadline_s
        self._slack_s = min(TIMER_SLACK_S, deadline_s * SLACK_SHARE)
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
        selection: Selection,
        timer: StageTimer | None = None,
    ) -> list[EntityFeatures]:
        """Features of each entity, in the order of ``entity_ids``; see ``resolve_batch``."""
        return (await self.resolve_batch(entity_ids, selection, timer)).entities()

    async def resolve_batch(
        self,
        entity_ids: Sequence[str],
        selection: Selection,
        timer: StageTimer | None = None,
    ) -> ResolvedBatch:
        """Features of each entity, group by group, in the order of ``entity_ids``.

        ``selection`` comes from ``selection()``; build it once and reuse it.
        Ids are validated first (``InvalidEntityId``); store failures are
        absorbed into ``stale`` or ``unavailable`` sources with their reason.
        """
        [resolved] = await self.resolve_parts([(entity_ids, selection)], timer)
        return resolved

    async def resolve_parts(
        self,
        parts: Sequence[tuple[Sequence[str], Selection]],
        timer: StageTimer | None = None,
    ) -> list[ResolvedBatch]:
        """``resolve_batch`` of several parts at once (entities of different kinds, e.g. a
        user and the items to rank for it): one cache pass and one round trip per store
        for all of them; one ``ResolvedBatch`` per part, in order."""
        timer = timer or StageTimer()
        requests = [
            ReadRequest(entity_id, group, fields)
            for entity_ids, selection in parts
            for entity_id in map(validate_entity_id, entity_ids)
            for group, fields in selection
        ]
        keys = [_cache_key(request) for request in requests]
        slots: list[_Slot | None] = [None] * len(requests)
        misses: list[int] = []
        waits: list[tuple[int, asyncio.Future[_Slot]]] = []
        with timer.stage(Stage.CACHE):
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
        resolved = []
        start = 0
        for entity_ids, selection in parts:
            width = len(selection)
            end = start + len(entity_ids) * width
            part = cast(list[_Slot], slots[start:end])
            resolved.append(
                ResolvedBatch(
                    tuple(entity_ids),
                    tuple(
                        _resolved_group(group, fields, part[column::width])
                        for column, (group, fields) in enumerate(selection)
                    ),
                )
            )
            start = end
        return resolved

    async def _fetch(
        self, requests: list[ReadRequest], keys: list[_CacheKey], timer: StageTimer
    ) -> list[_Slot]:
        """Ask each tier for what is missing, then stale values or defaults; settle waiters."""
        slots: list[_Slot | None] = [None] * len(requests)
        try:
            pending, failures = await self._ask_tiers(requests, slots, timer)
            for index in pending:
                slots[index] = _fallback(requests[index], keys[index], self._cache, failures[index])
            if None in slots:  # every request gets a tier's answer or a fallback
                raise AssertionError("unresolved feature group")
            done = cast(list[_Slot], slots)
            for key, slot in zip(keys, done, strict=True):
                if slot[5] is None:
                    self._cache.put(key, slot[:3])
            return done
        finally:
            # Waiters are released even when this task is cancelled mid-read.
            for request, key, maybe in zip(requests, keys, slots, strict=True):
                self._in_flight.settle(
                    key, _unanswered(request, Degraded.ABANDONED) if maybe is None else maybe
                )

    async def _ask_tiers(
        self, requests: list[ReadRequest], slots: list[_Slot | None], timer: StageTimer
    ) -> tuple[list[int], list[Degraded | None]]:
        """Fill ``slots`` from the stores; return what is still missing and, per request,
        the first failure met on its way (``None``: every store asked answered)."""
        deadline = asyncio.get_running_loop().time() + self._deadline_s - self._slack_s
        pending = list(range(len(requests)))
        failures: list[Degraded | None] = [None] * len(requests)
        for tier in self._tiers:
            if not pending:
                break
            asked = await self._ask(tier, [requests[index] for index in pending], deadline, timer)
            if asked.answers is None:
                for index in pending:
                    failures[index] = failures[index] or asked.failure
                continue
            still_missing = []
            for index, answer in zip(pending, asked.answers, strict=True):
                if answer is None:
                    still_missing.append(index)
                elif type(answer) is FailedRead:
                    failures[index] = failures[index] or answer.reason
                    still_missing.append(index)
                else:
                    slots[index] = _from_store(
                        requests[index], cast(StoredValues, answer), tier.source, failures[index]
                    )
            pending = still_missing
        return pending, failures

    async def _ask(
        self, tier: Tier, batch: list[ReadRequest], deadline: float, timer: StageTimer
    ) -> _TierAnswer:
        """One tier's answers to ``batch`` within ``deadline``; failures go to its breaker."""
        if tier.saturated():
            tier.breaker.trip("pool_saturated")
        if asyncio.get_running_loop().time() >= deadline:
            return _TierAnswer(None, Degraded.DEADLINE)
        permit = tier.breaker.allow()
        if permit is None:
            return _TierAnswer(None, Degraded.BREAKER_OPEN)
        try:
            async with ReplyDeadline(deadline):
                answers = await tier.store.read(batch, timer)
        except StoreError as exc:
            tier.breaker.record_failure(permit, exc.reason)
            self._error_log.error(f"{tier.source} read failed; falling back", exc)
            return _TierAnswer(None, Degraded.STORE_ERROR)
        except TimeoutError:
            tier.breaker.record_failure(permit, Degraded.DEADLINE)
            self._error_log.error(
                f"{tier.source} read got no reply within the {self._deadline_s * 1000:g} ms "
                "feature deadline; falling back"
            )
            return _TierAnswer(None, Degraded.DEADLINE)
        # A server of the store that failed (a cluster node: ``FailedRead.server_failed``)
        # costs only its own keys and is the store's own breakers' business: the store
        # answered, so the tier counts a success, and one node down never opens the
        # breaker of every node's entities.  A bad value speaks of its key alone (the store
        # logged it).  Error replies, which speak of the store, count against the tier.
        refused = [
            answer
            for answer in answers
            if type(answer) is FailedRead and answer.reason is Degraded.ERROR_REPLY
        ]
        if refused:
            error = refused[0].error
            # The reply's error code (NOPERM, WRONGTYPE, ...) says what is wrong without
            # the rest of its text, which may name keys: the status page shows the reason.
            tier.breaker.record_failure(permit, f"error_reply {error.split(' ', 1)[0]}")
            self._error_log.error(
                f"{tier.source} answered {len(refused)} of {len(batch)} keys with an error "
                f"reply; falling back for those: {error}"
            )
        else:
            tier.breaker.record_success(permit)
        return _TierAnswer(answers, None)


def _resolved_group(
    group: FeatureGroup, fields: tuple[str, ...], slots: list[_Slot]
) -> ResolvedGroup:
    """The group's slots, one per entity, turned into parallel tuples."""
    values, defaulted, event_ms, sources, ages, degraded = tuple(zip(*slots, strict=True)) or (
        ((),) * 6
    )
    return ResolvedGroup(group, fields, values, defaulted, event_ms, sources, ages, degraded)


def _cache_key(request: ReadRequest) -> _CacheKey:
    group = request.group
    return (group.entity.name, request.entity_id, group.name, request.fields)


def _default_values(request: ReadRequest) -> tuple[Any, ...]:
    by_name = request.group.by_name
    return tuple(by_name[name].default for name in request.fields)


def _unanswered(request: ReadRequest, failure: Degraded) -> _Slot:
    """The training defaults standing in for a fault."""
    return _default_values(request), request.fields, None, Source.UNAVAILABLE, None, failure


def _fallback(
    request: ReadRequest, key: _CacheKey, cache: FeatureCache[CachedGroup], failure: Degraded | None
) -> _Slot:
    """No store had it: defaults if every store said so, else a recent stale value or
    defaults standing in for the fault."""
    if failure is None:
        return _default_values(request), request.fields, None, Source.DEFAULT, None, None
    known = cache.get_stale(key)
    if known is not None and known[1] <= request.group.freshness.total_seconds():
        (values, defaulted, event_ms), age_s = known
        return values, defaulted, event_ms, Source.STALE, age_s, failure
    return _unanswered(request, failure)


def _from_store(
    request: ReadRequest, stored: StoredValues, source: Source, failure: Degraded | None
) -> _Slot:
    """Every requested field: the stored value where valid, else the training default.

    ``failure`` is what kept an earlier store from answering, if anything.
    """
    fields = request.fields
    event_ms = event_ms_of(stored)
    if type(stored) is StoredRow and stored.fields == fields:
        values = stored.in_order
    else:
        values = tuple(map(stored.get, fields))
    if None not in values:
        return values, (), event_ms, source, None, failure
    by_name = request.group.by_name
    defaulted = tuple(name for name, value in zip(fields, values, strict=True) if value is None)
    filled = tuple(
        by_name[name].default if value is None else value
        for name, value in zip(fields, values, strict=True)
    )
    return filled, defaulted, event_ms, source, None, failure


def _age_s(event_ms: int, now_s: float) -> float:
    return max(0.0, now_s - event_ms / 1000.0)
