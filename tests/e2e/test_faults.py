"""Fault injection under load: a real Redis behind a controllable proxy, a real `bentoml serve`.

For each fault the service must answer every request (no 5xx, no error),
open the Redis breaker while the fault lasts (where reads fail rather than
reconnect), close it after recovery and read from Redis again within
seconds, and never let a request wait on a hung socket: 99 % of feature
stages during a fault end within 2 ms of the deadline, and none lasts a
quarter of a second (a blackholed or paused Redis would hold a waiting
request for ever).

The target is that every stage ends within 2 ms of the deadline. A stage
can end later only when the worker's event loop is busy with other
requests as its timer fires; `make faults` measures and reports the
maximum (docs/reliability.md). This test bounds the 99th percentile, which
a busy shared CI machine cannot push past the bound by a single stall.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.harness.fault_drill import run_drill
from service.harness.fault_rig import BREAKS_REQUESTS, FAULTS, Rig, open_rig

DEADLINE_MS = 10.0
OVERRUN_MS = 2.0
"""How far past the deadline a feature stage may end (the target)."""
HUNG_MS = 250.0


@pytest.fixture(scope="module")
def rig(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with open_rig(bentoml_home, tmp_path_factory.mktemp("rig"), deadline_ms=DEADLINE_MS) as rig:
        yield rig


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_service_keeps_answering_through_the_fault(rig: Rig, fault: str) -> None:
    result = run_drill(rig.url, rig.driver, FAULTS[fault](rig))
    before, during, after = result.phases
    assert before.sources["redis"] > 0, before
    for phase in result.phases:
        assert phase.requests > 0, phase
        assert phase.failed == 0, phase
        assert phase.features_max_ms < HUNG_MS, phase
    assert during.features_p50_ms <= DEADLINE_MS, during
    assert during.features_p99_ms <= DEADLINE_MS + OVERRUN_MS, during
    if fault in BREAKS_REQUESTS:
        assert result.breaker_opened, result
        assert during.sources["redis"] < during.requests, during
    assert result.recovery_s is not None and result.recovery_s < 10, result
    assert result.breaker_closed_after, result
    assert after.sources["redis"] > 0, after
