"""Fault injection under load: a real Redis behind a proxy, a real ``bentoml serve``, and every
answer checked for what it returned.

Two rigs (``service/harness/fault_rig.py``): one with the cache off and no
backing store, where a Redis fault leaves the stale tier alone to answer; one
with the cache on and a SQLite backing store, which is then locked as well.
The rig wrote every entity's values (``drill_values``) and read each entity
once before any fault, so for every fault, in every phase:

- every request is answered (200), never from ``default`` or ``unavailable``:
  each entity has values of its own to stand in;
- every score is the model's ``predict_proba`` on the values the rig wrote
  (``tests.support.oracle``): a fallback answers with the entity's own values;
- an answer from neither Redis nor the cache says it was degraded, and a
  stale one says how old its values are.

Before the fault and after recovery at least 99 % of answers are real (Redis
or the cache).  While Redis fails, answers come from the cache, the backing
store or stale values, and the age of an entity's stale values grows with the
time between its answers; with the backing store locked too, stale values
stand in for it.  Feature stages end at the deadline: p50 within it, p90 at
most 2 ms past it (over 100 answers or more), and none anywhere near the
service's 2 s Redis socket timeout, which only a wait the deadline failed to
cut would reach.  The Redis breaker opens where reads fail, closes after,
and Redis answers again within seconds.

``make faults`` (``bench/faults.py``) runs the same drills longer and reports
the slowest stage of each phase in ``docs/reliability.md``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import pytest

from features.sources import REAL_SOURCES
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.fault_drill import Answer, DrillResult, PhaseStats, run_drill
from service.harness.fault_rig import (
    BREAKS_REQUESTS,
    FAULTS,
    SOCKET_TIMEOUT_MS,
    Rig,
    backing_lock,
    drill_request,
    open_rig,
)
from service.harness.waiting import wait_until
from tests.support.oracle import Model, expected_score, fraud_model

DEADLINE_MS = 10.0
OVERRUN_MS = 2.0
"""How far past the deadline a feature stage may end (the target)."""
HUNG_MS = SOCKET_TIMEOUT_MS / 2
"""A feature stage this long waited on Redis past the deadline, for its socket timeout."""
ENOUGH = 100
"""Answers a phase needs before its p90 and its share of real answers mean anything."""
REAL_SHARE = 0.99
FRESHNESS_S = EXAMPLE_REGISTRY.group("user", "features").freshness.total_seconds()
AGE_SLACK_S = 0.25
"""How far two stale ages of one entity may drift from the time between their answers (the
age is taken when the request is resolved, the time when its answer arrives)."""


@pytest.fixture(scope="module")
def model(bentoml_home: Path) -> Model:
    return fraud_model(bentoml_home)


@pytest.fixture(scope="module")
def stale_rig(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """No cache and no backing store: every request asks Redis, then the stale tier."""
    work = tmp_path_factory.mktemp("stale-rig")
    with open_rig(bentoml_home, work, deadline_ms=DEADLINE_MS) as rig:
        yield rig


@pytest.fixture(scope="module")
def backed_rig(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The cache on (1 s, short enough to run out during a fault) and a SQLite backing store."""
    work = tmp_path_factory.mktemp("backed-rig")
    with open_rig(
        bentoml_home, work, deadline_ms=DEADLINE_MS, cache_ttl_s=1.0, backing=True
    ) as rig:
        yield rig


def expected_scores(model: Model, rig: Rig) -> dict[str, float]:
    """Each entity's score from the oracle, on the values the rig wrote."""
    return {
        entity_id: expected_score(model, values, *amount_and_time(entity_id))
        for entity_id, values in rig.values.items()
    }


def amount_and_time(entity_id: str) -> tuple[float, int]:
    request = drill_request(entity_id)
    return request["amount"], request["timestamp"]


@pytest.mark.parametrize("rig_name", ["stale_rig", "backed_rig"])
def test_before_any_fault_every_score_is_the_models_on_the_values_written(
    request: pytest.FixtureRequest, model: Model, rig_name: str
) -> None:
    rig: Rig = request.getfixturevalue(rig_name)
    expected = expected_scores(model, rig)
    assert rig.scores == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # An answer on training defaults would show: no entity scores what defaults score.
    blind = {e: expected_score(model, {}, *amount_and_time(e)) for e in rig.values}
    assert all(abs(expected[e] - blind[e]) > 1e-6 for e in rig.values)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_without_a_backing_store_stale_values_stand_in(
    stale_rig: Rig, model: Model, fault: str
) -> None:
    result = drill(stale_rig, fault)
    check_every_answer(result, expected_scores(model, stale_rig))
    during = result.phase("during")
    allowed = {"stale"} if fault in BREAKS_REQUESTS else {"redis", "stale"}
    assert {answer.source for answer in during} <= allowed, result.stats("during")
    assert result.stats("during").sources["stale"] > 0, result.stats("during")
    if fault in BREAKS_REQUESTS:
        check_stale_ages_grow(during)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_with_a_backing_store_it_stands_in_then_stale_values_when_it_fails_too(
    backed_rig: Rig, model: Model, fault: str
) -> None:
    result = drill(backed_rig, fault, backing_too=True)
    check_every_answer(result, expected_scores(model, backed_rig))
    during, both = result.stats("during"), result.stats("backing down too")
    if fault in BREAKS_REQUESTS:
        assert set(during.sources) <= {"cache", "backing", "stale"}, during
        # Only reads that waited for Redis until the deadline, before its breaker opened,
        # leave no time to ask the backing store.
        assert during.sources["backing"] > during.sources["stale"], during
    else:
        assert set(during.sources) <= {"redis", "cache", "backing", "stale"}, during
    # A locked backing store answers nothing: the last values read stand in.
    if fault in BREAKS_REQUESTS:
        assert set(both.sources) <= {"cache", "stale"}, both
        assert both.sources["stale"] > 0, both
        check_stale_ages_grow(result.phase("during") + result.phase("backing down too"))
    else:
        assert "backing" not in both.sources, both


def drill(rig: Rig, fault: str, backing_too: bool = False) -> DrillResult:
    """Run one drill on a healthy rig and check what every drill must show."""
    # Each drill starts from a healthy service, whatever an earlier one left.
    wait_until(lambda: healthy(rig), timeout_s=20.0, poll_s=0.2)
    result = run_drill(
        rig.url,
        rig.load,
        FAULTS[fault](rig),
        rig.scores,
        backing_fault=backing_lock(rig) if backing_too else None,
        during_s=1.5,
        backing_down_s=1.5,
    )
    assert result.recovery_s is not None and result.recovery_s < 10, result.windows
    assert result.breaker_closed_after, result.phases
    check_real(result.stats("before"))
    check_real(result.stats("after"))
    for name in ("during", "backing down too"):
        if name in result.windows:
            check_deadline(result.stats(name))
    if fault in BREAKS_REQUESTS:
        assert result.breaker_opened, result.phases
    return result


def healthy(rig: Rig) -> bool:
    """Whether every answer of the last half second was real."""
    answers = rig.load.answers(since=time.monotonic() - 0.5)
    return len(answers) >= 20 and all(a.source in REAL_SOURCES for a in answers)


def check_real(phase: PhaseStats) -> None:
    assert phase.requests >= ENOUGH, phase
    assert phase.real >= REAL_SHARE * phase.requests, phase


def check_deadline(phase: PhaseStats) -> None:
    assert phase.requests >= ENOUGH, phase
    assert phase.features_p50_ms <= DEADLINE_MS, phase
    assert phase.features_p90_ms <= DEADLINE_MS + OVERRUN_MS, phase
    assert phase.features_max_ms < HUNG_MS, phase


def check_every_answer(result: DrillResult, expected: dict[str, float]) -> None:
    """What holds for every answer of the drill, whatever its phase."""
    assert result.answers, result.windows
    for answer in result.answers:
        assert answer.status == 200, answer
        assert answer.score is not None, answer
        assert answer.source not in ("default", "unavailable"), answer
        assert answer.score == pytest.approx(expected[answer.entity_id], rel=1e-12), answer
        if answer.source not in REAL_SOURCES:
            assert answer.degraded, answer
        if answer.source == "stale":
            assert answer.stale_age_s is not None, answer
            assert 0 < answer.stale_age_s <= FRESHNESS_S, answer
        else:
            assert answer.stale_age_s is None, answer


def check_stale_ages_grow(answers: Sequence[Answer]) -> None:
    """With Redis answering nothing, each entity's stale values age as time passes: two stale
    answers of one entity differ in age by the time between them."""
    by_entity: defaultdict[str, list[Answer]] = defaultdict(list)
    for answer in sorted(answers, key=lambda a: a.answered_at):
        if answer.source == "stale":
            by_entity[answer.entity_id].append(answer)
    pairs = 0
    for stale in by_entity.values():
        for earlier, later in pairwise(stale):
            assert earlier.stale_age_s is not None and later.stale_age_s is not None
            grew = later.stale_age_s - earlier.stale_age_s
            elapsed = later.answered_at - earlier.answered_at
            assert grew == pytest.approx(elapsed, abs=AGE_SLACK_S), (earlier, later)
            pairs += 1
    assert pairs > 0, "no entity was answered stale twice"
