"""A real `bentoml serve` over a real Redis Cluster (3 primaries, 3 replicas), with a primary
killed under load.

The drill kills a primary while ``/score`` requests flow, then asserts that no request failed
(only 200s, or 503s with ``Retry-After``), that only the lost shard's entities fell back, and
that answers came from Redis again within seconds of the promotion, well inside 20 s of the
kill.  ``cluster-node-timeout`` is 2 s, so the drill takes about 10 s; ``make faults`` runs
it with figures (``bench/failover.py``).  ``test_sentinel.py`` does the same behind Sentinel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.failover_drill import run_failover
from service.harness.fault_drill import Load, score_bodies
from service.harness.local_cluster import LocalCluster
from service.harness.served import start_service, stop
from service.harness.waiting import wait_until
from tests.support.failover import IDS, SERVICE_ENV, USERS, WRITER, check_failover, key_of


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
        status = client.get("/ops/status", headers=WRITER).json()
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
    home = nodes.primary_for(key_of(IDS[0]))
    elsewhere = next(user for user in IDS if nodes.primary_for(key_of(user)) != home)
    users = [IDS[0], elsewhere]
    now = int(time.time()) + 1  # newer than the demo data
    updates = [
        {"entity_id": user, "event_timestamp": now, "values": {"tx_count_1h": 77}} for user in users
    ]
    with httpx.Client(base_url=url, timeout=10.0) as client:
        pushed = client.post("/push", json={"updates": updates}, headers=WRITER)
        read = client.post("/features", json={"entity_ids": users, "groups": ["features"]})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json() == {"written": 2, "stale": [], "expired": []}
    groups = [entity["groups"]["features"] for entity in read.json()["entities"]]
    assert [(g["source"], g["values"]["tx_count_1h"]) for g in groups] == [("redis", 77)] * 2


def test_a_primary_killed_under_load_costs_only_its_own_entities(
    cluster: tuple[LocalCluster, str],
) -> None:
    nodes, url = cluster
    # The node REDIS_URL names: the client must not need it after starting.
    victim = nodes.nodes[0]
    assert victim in nodes.primaries()
    held = [user for user in IDS if nodes.primary_for(key_of(user)) == victim]
    driver = Load(url, score_bodies(IDS), rate=40.0, connections=2).start()
    try:
        wait_until(lambda: len(driver.answers()) >= 100, 60, 0.05)
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
    with httpx.Client(base_url=url, timeout=10.0, headers=WRITER) as client:
        status = client.get("/ops/status")
    assert status.status_code == 200, status.text
    nodes_status = status.json()["redis_nodes"]
    assert nodes_status and all(node["state"] for node in nodes_status.values()), nodes_status
    assert "127.0.0.1" not in status.text  # nodes go by role and slots, not by address
