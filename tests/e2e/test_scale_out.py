"""A real `bentoml serve` over a real Redis Cluster (3 primaries, 3 replicas) and over a real
Sentinel setup (a primary, two replicas, three sentinels), with a primary killed under load.

Each drill kills a primary while ``/score`` requests flow, then asserts that no request
failed (only 200s, or 503s with ``Retry-After``), that on the cluster only the lost shard's
entities fell back, and that answers came from Redis again within seconds of the promotion,
well inside 20 s of the kill.  ``cluster-node-timeout`` is 2 s and the sentinels'
``down-after-milliseconds`` 1 s, so a drill takes a few seconds; ``make faults`` runs them
with figures (``bench/failover.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.failover_drill import FailoverResult, run_failover
from service.harness.fault_drill import LoadDriver
from service.harness.local_cluster import LocalCluster
from service.harness.local_sentinel import MASTER_NAME, LocalSentinels
from service.harness.served import start_service, stop
from service.harness.waiting import wait_until

USERS = 300
IDS = [f"u{i:06d}" for i in range(USERS)]
BACK_WITHIN_S = 20.0
"""The promise: this long after the kill, every user is read from Redis again."""
AFTER_PROMOTION_S = 5.0
"""How soon after the promotion answers must come from Redis again."""
SERVICE_ENV = {
    "FEATSERVE_CACHE_TTL_S": "0",
    # Room for a shared CI machine's stalls: a healthy shard must not time out and fall back.
    "FEATSERVE_FEATURE_DEADLINE_MS": "100",
}


def key_of(entity_id: str) -> str:
    return f"user:{{{entity_id}}}:features"


@pytest.fixture(scope="module")
def cluster(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalCluster, str]]:
    with LocalCluster() as cluster:
        settings = Settings(redis_url=cluster.url, redis_mode="cluster")
        load_demo_data(None, USERS, tmp_path_factory.mktemp("demo"), settings)
        process, url, _ = start_service(
            bentoml_home,
            cluster.nodes[0],
            tmp_path_factory.mktemp("logs"),
            REDIS_URL=cluster.url,
            FEATSERVE_REDIS_MODE="cluster",
            **SERVICE_ENV,
        )
        try:
            yield cluster, url
        finally:
            stop(process)


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


def test_a_batch_over_every_primary_is_read_from_the_cluster(
    cluster: tuple[LocalCluster, str],
) -> None:
    nodes, url = cluster
    batch = IDS[:100]
    assert len({nodes.primary_for(key_of(user)).port for user in batch}) == 3
    with httpx.Client(base_url=url, timeout=10.0) as client:
        features = client.post("/features", json={"entity_ids": batch})
        scored = client.post(
            "/score_batch", json={"requests": [{"entity_id": u, "amount": 9.5} for u in batch]}
        )
        status = client.get("/ops/status").json()
    assert features.status_code == 200, features.text
    sources = {
        (entity["entity_id"], name): group["source"]
        for entity in features.json()["entities"]
        for name, group in entity["groups"].items()
    }
    assert set(sources.values()) == {"redis"}, sources
    assert scored.status_code == 200, scored.text
    assert {r["sources"]["features"] for r in scored.json()["results"]} == {"redis"}
    assert (status["redis_mode"], status["redis"]) == ("cluster", "up")


def test_a_push_lands_on_the_node_of_each_entity(cluster: tuple[LocalCluster, str]) -> None:
    nodes, url = cluster
    users = [
        IDS[0],
        *(u for u in IDS if nodes.primary_for(key_of(u)) != nodes.primary_for(key_of(IDS[0]))),
    ][:2]
    updates = [
        {"entity_id": user, "event_timestamp": 4_000_000_000, "values": {"tx_count_1h": 77}}
        for user in users
    ]
    with httpx.Client(base_url=url, timeout=10.0) as client:
        pushed = client.post("/push", json={"updates": updates})
        read = client.post("/features", json={"entity_ids": users, "groups": ["features"]})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json() == {"written": 2, "stale": []}
    groups = [entity["groups"]["features"] for entity in read.json()["entities"]]
    assert [(g["source"], g["values"]["tx_count_1h"]) for g in groups] == [("redis", 77)] * 2


def check_failover(result: FailoverResult) -> None:
    assert result.refused == [], result.refused[:3]
    assert result.promoted_after_s is not None, result
    back = result.back_on_redis_after_s
    assert back is not None and back < BACK_WITHIN_S, result.sources_affected
    assert back - result.promoted_after_s < AFTER_PROMOTION_S, (back, result.promoted_after_s)
    fell_back = {k: v for k, v in result.sources_affected.items() if k != "redis"}
    assert fell_back, result.sources_affected  # the kill was felt


def test_a_primary_killed_under_load_costs_only_its_own_entities(
    cluster: tuple[LocalCluster, str],
) -> None:
    nodes, url = cluster
    # The node REDIS_URL names: the client must not need it after starting.
    victim = nodes.nodes[0]
    assert victim in nodes.primaries()
    held = [user for user in IDS if nodes.primary_for(key_of(user)) == victim]
    driver = LoadDriver(url, IDS, connections=2, rate=40.0).start()
    try:
        wait_until(lambda: len(driver.samples_since(0)) >= 100, 60, 0.05)
        result = run_failover(
            driver,
            victim.kill,
            lambda: nodes.primary_for(key_of(held[0])) != victim,
            affected=held,
        )
    finally:
        driver.stop()
    check_failover(result)
    assert set(result.sources_unaffected) == {"redis"}, result.sources_unaffected


def test_a_primary_killed_under_load_behind_sentinel(
    sentinels: tuple[LocalSentinels, str],
) -> None:
    setup, url = sentinels
    victim = setup.primary()
    driver = LoadDriver(url, IDS, connections=2, rate=40.0).start()
    try:
        wait_until(lambda: len(driver.samples_since(0)) >= 100, 60, 0.05)
        result = run_failover(driver, victim.kill, lambda: setup.primary() != victim)
    finally:
        driver.stop()
    check_failover(result)
