"""Prometheus metrics of the scoring service, served on BentoML's ``/metrics``.

Defined with ``prometheus_client`` directly (BentoML's own metrics module
is deprecated in 1.4); BentoML exposes the default registry, aggregated
across workers.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from prometheus_client import Counter, Histogram

from features.serving.resolver import ResolvedBatch
from features.sources import Source
from features.timing import Stage

__all__ = ["observe_refusal", "observe_request"]

# From 50 microseconds to 1 second: the stages of one request span that range.
_STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

STAGE_SECONDS = Histogram(
    "featserve_stage_seconds",
    f"Time spent in each stage of a request ({', '.join(Stage)}).",
    ["endpoint", "stage"],
    buckets=_STAGE_BUCKETS,
)
FEATURE_SOURCES = Counter(
    "featserve_feature_groups_total",
    "Feature groups resolved, by where their values came from.",
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
OVERLOAD_REFUSALS = Counter(
    "featserve_overload_refusals_total",
    "Requests refused at once (503) because the worker already had FEATSERVE_MAX_IN_FLIGHT "
    "requests in flight, by path.",
    ["path"],
)


def observe_request(endpoint: str, timing_ms: Mapping[str, float], resolved: ResolvedBatch) -> None:
    """Record one request's stage times, the source of every group it resolved, and each
    answer (one per entity) that a fault shaped."""
    for stage, milliseconds in timing_ms.items():
        STAGE_SECONDS.labels(endpoint, stage).observe(milliseconds / 1000.0)
    degraded = []
    for group in resolved.groups:
        for source, count in collections.Counter(group.sources).items():
            FEATURE_SOURCES.labels(group.group.name, source.value).inc(count)
            CACHE_LOOKUPS.labels("hit" if source is Source.CACHE else "miss").inc(count)
        if group.degraded.count(None) < len(group.degraded):
            degraded.append(group.degraded)
    if degraded:
        reasons = collections.Counter(
            next(reason for reason in row if reason is not None)
            for row in zip(*degraded, strict=True)
            if row.count(None) < len(row)
        )
        for reason, count in reasons.items():
            DEGRADED_ANSWERS.labels(endpoint, reason.value).inc(count)


def observe_refusal(path: str) -> None:
    """Count one request refused for overload."""
    OVERLOAD_REFUSALS.labels(path).inc()
