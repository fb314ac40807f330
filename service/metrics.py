"""Prometheus metrics of the scoring service, served on BentoML's ``/metrics``.

Defined with ``prometheus_client`` directly (BentoML's own metrics module
is deprecated in 1.4); BentoML exposes the default registry, aggregated
across workers.  BentoML runs ``prometheus_client`` in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``): every value lives in a memory-mapped file
per worker and ``/metrics`` adds them up, so one observation costs a few
microseconds (two locked file writes), and a gauge says how to combine its
workers' values:

- ``livemax`` for states and settings (a breaker's state, the budgets): the
  worst of the live workers.  Each worker keeps its own breakers; a worker
  whose breaker is open answers from fallbacks whatever the others do.
- ``livesum`` for the Redis pool: connections held and the pool's size,
  summed over the live workers (each has a pool of its own).

"live": a worker that exits (BentoML marks it dead) stops counting, so a
dead worker's last state does not linger.

Request rate, errors and duration per endpoint are BentoML's own
(``bentoml_service_request_total{endpoint,http_response_code}``,
``bentoml_service_request_duration_seconds``): they count every answer,
the refusals of the token, body and admission checks (401, 403, 408, 413,
415, 503) included, since BentoML's metrics layer runs before them
(``service.bentoml_adapter``).  ``featserve_overload_refusals_total`` also
counts overload refusals, by path.

What a request changes is recorded once per request, aggregated: a batch of
100 entities makes one increment per (group, source), not 100
(``BatchHistogram``), and each labelled child is looked up once per process
(``_child``).  Gauges that follow the stores are sampled once a second
(``StoreGauges``), never per request.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from features.breaker import BreakerState, CircuitBreaker
from features.budgets import LatencyBudget
from features.burst_log import BurstLog
from features.errors import StoreError
from features.registry import FeatureGroup
from features.serving.resolver import ResolvedBatch, ResolvedGroup, Tier
from features.sources import Degraded, Source
from features.stores.redis import AsyncRedisStore
from features.stores.redis_cluster import AsyncRedisClusterStore
from features.stores.redis_memory import MemoryReport
from features.timing import Stage

__all__ = [
    "AGE_BUCKETS_S",
    "BREAKER_STATE_VALUES",
    "GAUGE_INTERVAL_S",
    "MEMORY_INTERVAL_S",
    "BatchHistogram",
    "StoreGauges",
    "observe_refusal",
    "observe_request",
    "publish_settings",
    "start_series",
]

GAUGE_INTERVAL_S = 1.0
"""How often ``StoreGauges`` samples the stores: well under a scrape interval, and no cost
per request."""

MEMORY_INTERVAL_S = 5.0
"""How often ``StoreGauges`` asks Redis how full it is (``INFO``): memory fills over
minutes, and each worker asks on its own."""


class BatchHistogram(Histogram):
    """A ``Histogram`` that also takes many observations in one call.

    prometheus_client has no bulk observation, and in multiprocess mode each
    ``observe`` takes two locked writes to a memory-mapped file, which a batch
    would pay per entity (docs/benchmarks.md).  ``observe_many`` writes the sum
    once and each bucket it touches once.  It relies on ``Histogram``'s own
    fields (``_upper_bounds``, ``_buckets``, ``_sum``), so a test checks that it
    records exactly what ``observe`` would, one amount at a time.
    """

    def observe_many(self, amounts: Sequence[float]) -> None:
        """Observe each of ``amounts``."""
        # prometheus_client leaves this private check unannotated.
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        if not amounts:
            return
        counts = [0] * len(self._upper_bounds)
        for amount in amounts:
            # The first bound at or above the amount, as ``observe`` finds it.
            counts[bisect.bisect_left(self._upper_bounds, amount)] += 1
        self._sum.inc(sum(amounts))
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


# From 50 microseconds to 1 second: the stages of one request span that range.
_STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

AGE_BUCKETS_S = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800,
    3600, 7200, 14400, 28800, 43200, 86400, 172800, 345600, 604800,
)  # fmt: skip
"""From a second to a week: freshness windows run from minutes (velocity features) to days
(embeddings).  Each shipped group's freshness window and TTL (twice it) is a bound, so
``le="3600"`` counts exactly the values within the ``features`` group's window."""

STAGE_SECONDS = Histogram(
    "featserve_stage_seconds",
    f"Time spent in each stage of a request ({', '.join(Stage)}).",
    ["endpoint", "stage"],
    buckets=_STAGE_BUCKETS,
)
ANSWERS = Counter(
    "featserve_answers_total",
    "Answers given: scored transactions (/score, /score_batch) and entities of /features, "
    "by endpoint; the denominator of the degraded share.",
    ["endpoint"],
)
FEATURE_SOURCES = Counter(
    "featserve_feature_groups_total",
    "Feature groups resolved, by where their values came from.",
    ["group", "source"],
)
FEATURE_AGE = BatchHistogram(
    "featserve_feature_age_seconds",
    "Age of the feature values served (now minus their event time: a group's newest value), "
    "by group and source; values of unknown age (defaults, keys written without _event_ms) "
    "are not observed.",
    ["group", "source"],
    buckets=AGE_BUCKETS_S,
)
PAST_FRESHNESS = Counter(
    "featserve_feature_groups_past_freshness_total",
    "Feature groups served with values older than their group's freshness window, by group "
    "and source.",
    ["group", "source"],
)
CACHE_LOOKUPS = Counter(
    "featserve_cache_lookups_total",
    "In-process cache lookups of a feature group, by result.",
    ["result"],
)
DEGRADED_ANSWERS = Counter(
    "featserve_degraded_answers_total",
    "Answers (a scored transaction, or an entity of /features) that a fault shaped, by "
    "endpoint and the reason of their first degraded feature group.",
    ["endpoint", "reason"],
)
BAD_KEYS = Counter(
    "featserve_bad_keys_total",
    "Feature groups read from a key holding a bad value (a key of another structure, a value "
    "that does not decode or lies outside its declared range), by group: served from the "
    "fallbacks, never to the model; the log names the key.",
    ["group"],
)
OVERLOAD_REFUSALS = Counter(
    "featserve_overload_refusals_total",
    "Requests refused (503) because the worker already had FEATSERVE_MAX_IN_FLIGHT "
    "requests in flight, by path.",
    ["path"],
)

BREAKER_STATE_VALUES: Mapping[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
"""A breaker state as a gauge value: the higher, the worse."""

BREAKER_STATE = Gauge(
    "featserve_breaker_state",
    "Each store's circuit breaker: 0 closed, 1 half-open (the next read probes the store), "
    "2 open (the store is skipped); the worst of the workers.  On a Redis Cluster also each "
    'node\'s, labelled by its role and slots (node="primary 0-5460"); node is empty for a '
    "store's own breaker.",
    ["store", "node"],
    multiprocess_mode="livemax",
)
POOL_IN_USE = Gauge(
    "featserve_redis_pool_connections_in_use",
    "Redis connections held by reads, the most at once in the last second, summed over the "
    "workers (on a cluster: on the busiest node, at most).",
    multiprocess_mode="livesum",
)
POOL_LIMIT = Gauge(
    "featserve_redis_pool_connections_limit",
    "Redis connections the pools may open (FEATSERVE_REDIS_POOL_SIZE), summed over the "
    "workers; the Redis breaker opens above FEATSERVE_BREAKER_POOL_USAGE of a worker's pool.",
    multiprocess_mode="livesum",
)
LATENCY_BUDGET = Gauge(
    "featserve_latency_budget_seconds",
    "The p99 latency budget of FEATSERVE_PROFILE, for the whole request (stage total) and "
    "for feature retrieval (stage features).",
    ["stage"],
    multiprocess_mode="livemax",
)
FEATURE_DEADLINE = Gauge(
    "featserve_feature_deadline_seconds",
    "How long feature resolution waits for the stores (FEATSERVE_FEATURE_DEADLINE_MS).",
    multiprocess_mode="livemax",
)
REDIS_USED_MEMORY = Gauge(
    "featserve_redis_used_memory_bytes",
    "Memory Redis uses (INFO used_memory), sampled every few seconds; on a cluster per "
    "primary, node its role and slots, empty for a single server.",
    ["node"],
    multiprocess_mode="livemax",
)
REDIS_MAX_MEMORY = Gauge(
    "featserve_redis_maxmemory_bytes",
    "Redis' maxmemory (0: no limit), sampled with featserve_redis_used_memory_bytes.",
    ["node"],
    multiprocess_mode="livemax",
)
REDIS_EVICTED_KEYS = Gauge(
    "featserve_redis_evicted_keys",
    "Keys Redis evicted for maxmemory since it started (INFO evicted_keys): any increase "
    "means feature hashes were dropped and read as absent until written again.",
    ["node"],
    multiprocess_mode="livemax",
)
FRESHNESS_WINDOW = Gauge(
    "featserve_feature_freshness_window_seconds",
    "Each feature group's freshness window, as the registry declares it.",
    ["group"],
    multiprocess_mode="livemax",
)


def observe_request(
    endpoint: str,
    timing_ms: Mapping[str, float],
    resolved: ResolvedBatch,
    now_s: float | None = None,
    related: Sequence[ResolvedBatch] = (),
    degraded_answers: Sequence[Degraded | None] | None = None,
) -> None:
    """Record one request's stage times, the source and age of every group it resolved, and
    each answer (one per entity of ``resolved``) that a fault shaped.  ``now_s``: epoch
    seconds, for ages.  ``related``: the groups of other entities the answers read (named
    ``entity:group``), with ``degraded_answers`` saying per answer why a fault shaped it."""
    for stage, milliseconds in timing_ms.items():
        _child(STAGE_SECONDS, endpoint, stage).observe(milliseconds / 1000.0)
    _child(ANSWERS, endpoint).inc(len(resolved.entity_ids))
    now_s = time.time() if now_s is None else now_s
    degraded = []
    for group in resolved.groups:
        _observe_group(group, group.group.name, now_s)
        if group.degraded.count(None) < len(group.degraded):
            degraded.append(group.degraded)
    for part in related:
        for group in part.groups:
            _observe_group(group, f"{group.group.entity.name}:{group.group.name}", now_s)
    if degraded_answers is not None:
        shaped = collections.Counter(reason for reason in degraded_answers if reason is not None)
        for reason, count in shaped.items():
            _child(DEGRADED_ANSWERS, endpoint, reason.value).inc(count)
    elif degraded:
        reasons = collections.Counter(
            next(reason for reason in row if reason is not None)
            for row in zip(*degraded, strict=True)
            if row.count(None) < len(row)
        )
        for reason, count in reasons.items():
            _child(DEGRADED_ANSWERS, endpoint, reason.value).inc(count)


def _observe_group(group: ResolvedGroup, name: str, now_s: float) -> None:
    """The sources, ages and bad keys of one group, labelled ``name``."""
    for source, count in collections.Counter(group.sources).items():
        _child(FEATURE_SOURCES, name, source.value).inc(count)
        _child(CACHE_LOOKUPS, "hit" if source is Source.CACHE else "miss").inc(count)
    _observe_ages(group, now_s, name)
    bad = group.degraded.count(Degraded.BAD_VALUE)
    if bad:
        _child(BAD_KEYS, name).inc(bad)


def _observe_ages(group: ResolvedGroup, now_s: float, name: str) -> None:
    """The age of each entity's values, and how many are past the group's freshness window."""
    by_source: dict[Source, list[float]] = {}
    for source, age_s in zip(group.sources, group.ages_s(now_s), strict=True):
        if age_s is not None:
            by_source.setdefault(source, []).append(age_s)
    window_s = group.group.freshness.total_seconds()
    for source, ages in by_source.items():
        _child(FEATURE_AGE, name, source.value).observe_many(ages)
        past = sum(age_s > window_s for age_s in ages)
        if past:
            _child(PAST_FRESHNESS, name, source.value).inc(past)


@functools.cache
def _child(metric: MetricWrapperBase, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels`` takes a lock and validates its
    arguments, and a request records a dozen values.  Label values come from
    fixed sets (endpoints, stages, groups, sources, reasons, guarded paths)."""
    return metric.labels(*labels)


def observe_refusal(path: str) -> None:
    """Count one request refused for overload."""
    _child(OVERLOAD_REFUSALS, path).inc()


def start_series(
    endpoints: Sequence[str],
    guarded_paths: Sequence[str],
    groups: Sequence[FeatureGroup],
    related_groups: Sequence[FeatureGroup] = (),
) -> None:
    """Expose every counter series an alert or a dashboard divides by, at 0, from start-up:
    a series that appears only with its first event makes ``rate()`` miss that event, and a
    ratio of a series that does not exist yet is no value rather than 0.  ``groups`` are the
    scored entity's, ``related_groups`` other entities' (labelled ``entity:group``)."""
    for endpoint in endpoints:
        _child(ANSWERS, endpoint)
        for reason in Degraded:
            _child(DEGRADED_ANSWERS, endpoint, reason.value)
    for path in guarded_paths:
        _child(OVERLOAD_REFUSALS, path)
    for name in _labels(groups, related_groups):
        _child(BAD_KEYS, name)
        for source in Source:
            _child(FEATURE_SOURCES, name, source.value)
            if source not in (Source.DEFAULT, Source.UNAVAILABLE):
                _child(PAST_FRESHNESS, name, source.value)
    for result in ("hit", "miss"):
        _child(CACHE_LOOKUPS, result)


def publish_settings(
    budget: LatencyBudget,
    deadline_s: float,
    groups: Sequence[FeatureGroup],
    related_groups: Sequence[FeatureGroup] = (),
) -> None:
    """Publish what the service was configured with, once at start-up: the profile's budget,
    the feature deadline and each group's freshness window, for dashboards and alerts to
    compare with (groups labelled as in ``start_series``)."""
    LATENCY_BUDGET.labels(Stage.TOTAL).set(budget.total_ms / 1000.0)
    LATENCY_BUDGET.labels(Stage.FEATURES).set(budget.features_ms / 1000.0)
    FEATURE_DEADLINE.set(deadline_s)
    for name, group in _labels(groups, related_groups).items():
        FRESHNESS_WINDOW.labels(name).set(group.freshness.total_seconds())


def _labels(
    groups: Sequence[FeatureGroup], related_groups: Sequence[FeatureGroup]
) -> dict[str, FeatureGroup]:
    """Each group by its metric label: the scored entity's by name, others' ``entity:group``."""
    labelled = {group.name: group for group in groups}
    labelled.update({f"{group.entity.name}:{group.name}": group for group in related_groups})
    return labelled


class StoreGauges:
    """Samples the stores' breakers and the Redis pool into gauges (``run``: every second),
    and how full Redis is (every ``MEMORY_INTERVAL_S``, through ``memory_source``: a client
    apart from the reads', outside every breaker).

    A cluster node's breaker is published (``store="redis"``, ``node`` its role and
    slots) while the node serves slots; a node that stops serving any (a primary lost
    in a failover) is set back to 0, so a node nobody reads from holds no alert open.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        redis: AsyncRedisStore,
        memory_source: AsyncRedisStore,
        error_log: BurstLog,
    ) -> None:
        self._tiers = tuple(tiers)
        self._redis = redis
        self._memory_source = memory_source
        self._error_log = error_log
        self._nodes: set[str] = set()
        self.memory: list[MemoryReport] = []
        """The last memory sample, one report per server; empty until one succeeds."""
        self.memory_error = ""
        """Why the last memory sample failed (the error's category); empty when it did not."""

    def publish(self) -> None:
        """Set every gauge from the stores' state now."""
        for tier in self._tiers:
            BREAKER_STATE.labels(tier.source.value, "").set(_state_value(tier.breaker))
        if isinstance(self._redis, AsyncRedisClusterStore):
            self._publish_nodes(self._redis.node_breakers())
        POOL_IN_USE.set(self._redis.take_peak_connections())
        POOL_LIMIT.set(self._redis.pool_size)

    async def sample_memory(self) -> None:
        """Ask Redis how full it is and publish it; a failure is logged once per burst and
        kept for the status page, and the gauges keep their last values."""
        try:
            reports = await self._memory_source.memory()
        except StoreError as exc:
            self.memory_error = exc.reason
            self._error_log.error("sampling Redis' memory (INFO) failed", exc)
            return
        self.memory, self.memory_error = reports, ""
        for report in reports:
            REDIS_USED_MEMORY.labels(report.node).set(report.used_bytes)
            REDIS_MAX_MEMORY.labels(report.node).set(report.max_bytes)
            REDIS_EVICTED_KEYS.labels(report.node).set(report.evicted_keys)

    def _publish_nodes(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        serving = {label: b for label, b in breakers.items() if not label.startswith("node")}
        redis = Source.REDIS.value
        for label in self._nodes - set(serving):
            BREAKER_STATE.labels(redis, label).set(0)
        for label, breaker in serving.items():
            BREAKER_STATE.labels(redis, label).set(_state_value(breaker))
        self._nodes = set(serving)

    async def run(
        self, interval_s: float = GAUGE_INTERVAL_S, memory_interval_s: float = MEMORY_INTERVAL_S
    ) -> None:
        """Publish now and every ``interval_s``, sample memory now and every
        ``memory_interval_s``, until cancelled."""
        loop = asyncio.get_running_loop()
        memory_due = loop.time()
        while True:
            self.publish()
            if loop.time() >= memory_due:
                memory_due = loop.time() + memory_interval_s
                await self.sample_memory()
            await asyncio.sleep(interval_s)


def _state_value(breaker: CircuitBreaker) -> int:
    return BREAKER_STATE_VALUES[breaker.state]
