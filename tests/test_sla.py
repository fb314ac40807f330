"""``featserve sla``'s verdict from samples built by hand: latency, truth and shed load apart."""

from __future__ import annotations

import math

from features.budgets import LatencyBudget
from service.cli.sla import Limits, as_json, evaluate
from service.harness.answers import AnswerMix
from service.harness.load import Sample

LIMITS = Limits(LatencyBudget(total_ms=50, features_ms=10), max_degraded_pct=1.0, max_shed_pct=0.0)
REDIS = AnswerMix(1, 0, (("redis", 1),))
BLIND = AnswerMix(1, 1, (("unavailable", 1),))


def answered(mix: AnswerMix, latency_ms: float = 2.0) -> Sample:
    return Sample(0.0, latency_ms / 1000, 200, {"features": 0.5, "total": 1.0}, mix=mix)


def test_fast_real_answers_meet_the_budget() -> None:
    verdict = evaluate({"/score": [answered(REDIS)] * 200}, LIMITS, 2.0)
    assert verdict.passed
    assert verdict.sources == {"redis": 200}
    assert (verdict.answers, verdict.degraded, verdict.shed, verdict.failed) == (200, 0, 0, 0)


def test_fast_blind_answers_breach_the_degraded_share() -> None:
    # 3 of 200 degraded is 1.5 %: over the 1 % limit although every answer took 2 ms.
    samples = [answered(REDIS)] * 197 + [answered(BLIND)] * 3
    verdict = evaluate({"/score": samples}, LIMITS, 2.0)
    assert not verdict.passed
    [degraded] = [check for check in verdict.checks if check.what == "degraded answers"]
    assert degraded.measured == 1.5
    assert not degraded.holds
    assert all(check.holds for check in verdict.checks if check.unit == "ms")


def test_shed_load_is_counted_apart_from_failures() -> None:
    shed = Sample(0.0, 0.001, 503, {}, retry_after=True)
    broken = Sample(0.0, 0.001, 503, {})
    verdict = evaluate({"/score": [answered(REDIS)] * 8 + [shed, shed]}, LIMITS, 1.0)
    assert (verdict.shed, verdict.failed) == (2, 0)
    assert not verdict.passed  # 20 % shed over a 0 % limit
    allowed = Limits(LIMITS.budget, max_shed_pct=25.0)
    assert evaluate({"/score": [answered(REDIS)] * 8 + [shed, shed]}, allowed, 1.0).passed
    verdict = evaluate({"/score": [answered(REDIS)] * 8 + [broken]}, allowed, 1.0)
    assert (verdict.shed, verdict.failed, verdict.passed) == (0, 1, False)


def test_no_answers_measure_no_degraded_share() -> None:
    verdict = evaluate({"/score": [Sample(0.0, 0.001, 0, {})]}, LIMITS, 1.0)
    [degraded] = [check for check in verdict.checks if check.what == "degraded answers"]
    assert math.isnan(degraded.measured)
    assert not verdict.passed


def test_the_json_verdict() -> None:
    samples = [answered(REDIS, 1.0)] * 99 + [answered(BLIND, 30.0)]
    document = as_json(evaluate({"/score": samples}, LIMITS, 1.0), LIMITS, "fraud")
    assert document["met"] is True  # exactly 1 % degraded is within 1 %
    assert document["sources"] == {"redis": 99, "unavailable": 1}
    assert document["degraded_pct"] == 1.0
    assert document["statuses"] == {"200": 100}
    assert document["stages"]["client"]["p99_ms"] == 1.0
    assert document["stages"]["client"]["max_ms"] == 30.0
    assert document["endpoints"]["/score"]["answers"] == 100
