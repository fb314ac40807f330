"""A full Redis, under both answers Redis gives to a full memory, through a real service.

With ``noeviction`` Redis refuses writes (``OOM``): ``/push`` answers 503 with
``Retry-After`` and ``featserve materialize`` exits 3 with nothing counted as written. With
an eviction policy Redis drops keys silently: the evictions show in ``/metrics`` and
``/ops/status``. Both show how full Redis is, sampled off the request path.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.cli.demo import load_demo_data
from service.harness.example import example_module
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT, clean_environment, start_service, stop

LIMIT_BYTES = 4_000_000
write_demo_tables = example_module("demo_tables").write_demo_tables


def fill(admin: redis.Redis) -> None:
    """Write 1 kB keys until Redis refuses one (noeviction) or has evicted some (any other
    policy). The last ones go one command at a time: a refused batch's own query buffer
    counted in the memory it was refused for, and leaves room when it is freed."""
    for start in range(0, 100_000, 100):
        try:
            admin.mset({f"filler:{start + i}": b"x" * 1000 for i in range(100)})
        except redis.exceptions.OutOfMemoryError:
            break
        if admin.info("stats")["evicted_keys"]:
            return
    for index in range(100_000):
        try:
            admin.set(f"filler:single:{index}", b"x" * 1000)
        except redis.exceptions.OutOfMemoryError:
            return
    raise AssertionError("Redis never filled up")


@pytest.fixture(params=["noeviction", "allkeys-lru"])
def full_service(
    request: pytest.FixtureRequest, bentoml_home: Path, tmp_path: Path
) -> Iterator[tuple[httpx.Client, LocalRedis, str]]:
    """A service over a Redis at its ``maxmemory``, under the policy named by the param."""
    policy = request.param
    with LocalRedis() as server, redis.Redis(port=server.port) as admin:
        load_demo_data(server.url, 20, tmp_path / "demo")
        admin.config_set("maxmemory", LIMIT_BYTES)
        admin.config_set("maxmemory-policy", policy)
        fill(admin)
        token = secrets.token_urlsafe(16)
        process, url, _ = start_service(bentoml_home, server, tmp_path, FEATSERVE_WRITE_TOKEN=token)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
                yield client, server, policy
        finally:
            stop(process)


def memory_metrics(client: httpx.Client) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {
        sample.name: sample.value
        for family in families
        for sample in family.samples
        if sample.name.startswith("featserve_redis_") and sample.labels.get("node") == ""
    }


def test_a_full_redis_shows_in_metrics_and_status_and_push_says_when_to_retry(
    full_service: tuple[httpx.Client, LocalRedis, str], tmp_path: Path
) -> None:
    client, server, policy = full_service
    # Sampled at start-up, after Redis filled up.
    metrics = memory_metrics(client)
    assert metrics["featserve_redis_maxmemory_bytes"] == LIMIT_BYTES
    assert metrics["featserve_redis_used_memory_bytes"] > 0.8 * LIMIT_BYTES
    status = client.get("/ops/status").json()["redis_memory"][""]
    assert (status["max_bytes"], status["policy"]) == (LIMIT_BYTES, policy)
    assert status["used_share"] > 0.8
    update = {"entity_id": "u000003", "event_timestamp": time.time(), "values": {"is_premium": 1}}
    pushed = client.post("/push", json={"updates": [update]})
    if policy == "noeviction":
        assert metrics["featserve_redis_evicted_keys"] == 0
        assert pushed.status_code == 503, pushed.text
        assert pushed.headers["Retry-After"] == "2"
        assert "cannot take writes" in pushed.json()["error"]
        check_materialize_stops_with_nothing_counted_written(server, tmp_path)
    else:
        assert metrics["featserve_redis_evicted_keys"] > 0
        assert status["evicted_keys"] > 0
        assert pushed.status_code == 200, pushed.text


def check_materialize_stops_with_nothing_counted_written(server: LocalRedis, tmp: Path) -> None:
    table = write_demo_tables(tmp / "more", 50, int(time.time()))["features"]
    featserve = Path(sys.executable).parent / "featserve"
    ran = subprocess.run(
        [
            featserve,
            "materialize",
            str(table),
            "--redis-url",
            server.url,
            "--json",
            "--project",
            str(EXAMPLE_PROJECT),
        ],
        capture_output=True,
        text=True,
        env=clean_environment(),
    )
    assert ran.returncode == 3, ran.stdout + ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["written"] == 0, summary
    assert summary["stopped"]["retry_safe"] is True
