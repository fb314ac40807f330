"""The service's metrics: one degraded answer counted per entity, under its first reason."""

from __future__ import annotations

from prometheus_client import REGISTRY

from features.registry import FRAUD_REGISTRY, FeatureGroup
from features.serving.resolver import Degraded, ResolvedBatch, ResolvedGroup, Source
from service.metrics import observe_request

FEATURES = FRAUD_REGISTRY.group("user", "features")
EMBEDDING = FRAUD_REGISTRY.group("user", "embedding")


def degraded_count(endpoint: str, reason: str) -> float:
    labels = {"endpoint": endpoint, "reason": reason}
    return REGISTRY.get_sample_value("featserve_degraded_answers_total", labels) or 0.0


def group(
    chosen: FeatureGroup, sources: tuple[Source, ...], degraded: tuple[Degraded | None, ...]
) -> ResolvedGroup:
    rows = len(sources)
    values = tuple(tuple(chosen.defaults.values()) for _ in range(rows))
    return ResolvedGroup(
        chosen,
        chosen.feature_names,
        values,
        ((),) * rows,
        (None,) * rows,
        sources,
        (None,) * rows,
        degraded,
    )


def test_each_degraded_entity_counts_once_under_its_first_reason() -> None:
    batch = ResolvedBatch(
        ("healthy", "both", "second"),
        (
            group(
                FEATURES,
                (Source.REDIS, Source.UNAVAILABLE, Source.CACHE),
                (None, Degraded.DEADLINE, None),
            ),
            group(
                EMBEDDING,
                (Source.REDIS, Source.STALE, Source.UNAVAILABLE),
                (None, Degraded.ERROR_REPLY, Degraded.BREAKER_OPEN),
            ),
        ),
    )
    reasons = ("deadline", "error_reply", "breaker_open")
    before = {reason: degraded_count("features", reason) for reason in reasons}
    observe_request("features", {"total": 1.0}, batch)
    counted = {reason: degraded_count("features", reason) - before[reason] for reason in reasons}
    assert counted == {"deadline": 1, "error_reply": 0, "breaker_open": 1}


def test_answers_no_fault_shaped_count_nothing() -> None:
    batch = ResolvedBatch(("a",), (group(FEATURES, (Source.DEFAULT,), (None,)),))
    before = degraded_count("score", "deadline")
    observe_request("score", {"total": 1.0}, batch)
    assert degraded_count("score", "deadline") == before
