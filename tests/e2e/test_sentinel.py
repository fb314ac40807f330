"""A real `bentoml serve` behind Sentinel (a primary, two replicas, three sentinels), with the
primary killed under load: no request fails, and answers come from Redis again within seconds
of the switch (``down-after-milliseconds`` 1 s), well inside 20 s of the kill.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.failover_drill import run_failover
from service.harness.fault_drill import Load, score_bodies
from service.harness.local_sentinel import MASTER_NAME, LocalSentinels
from service.harness.served import start_service, stop
from service.harness.waiting import wait_until
from tests.support.failover import IDS, SERVICE_ENV, USERS, check_failover


@pytest.fixture(scope="module")
def sentinels(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalSentinels, str]]:
    with LocalSentinels() as sentinels:
        where = {
            "FEATSERVE_REDIS_MODE": "sentinel",
            "FEATSERVE_SENTINELS": sentinels.sentinel_addresses,
            "FEATSERVE_SENTINEL_MASTER": MASTER_NAME,
        }
        settings = Settings(
            redis_mode="sentinel",
            sentinels=sentinels.sentinel_addresses,
            sentinel_master=MASTER_NAME,
        )
        load_demo_data(None, USERS, tmp_path_factory.mktemp("demo"), settings)
        process, url, _ = start_service(
            bentoml_home,
            sentinels.primary(),
            tmp_path_factory.mktemp("logs"),
            **where,
            **SERVICE_ENV,
        )
        try:
            yield sentinels, url
        finally:
            stop(process)


def test_a_primary_killed_under_load_behind_sentinel(
    sentinels: tuple[LocalSentinels, str],
) -> None:
    setup, url = sentinels
    victim = setup.primary()
    driver = Load(url, score_bodies(IDS), rate=40.0, connections=2).start()
    try:
        wait_until(lambda: len(driver.answers()) >= 100, 60, 0.05)
        result = run_failover(driver, victim.kill, lambda: setup.primary() != victim)
    finally:
        driver.stop()
    check_failover(result)
