"""Real answers end to end, on one worker at default settings over a real Redis.

Under overload every answer must be real (features from Redis or the cache)
or an explicit refusal (503 with ``Retry-After``): a saturated
worker must never answer from training defaults or stale values while Redis
is healthy.  When Redis refuses the reads (an ACL that no longer covers the
keys) no answer may claim Redis or the cache, ``/ops/status`` must say why,
and once the ACL is fixed entities must be read from Redis again.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.cli.demo import load_demo_data
from service.harness.load import Endpoint, LoadPlan, Response, Sample, drive
from service.harness.local_redis import LocalRedis
from service.harness.waiting import wait_until
from tests.e2e.conftest import start_service, stop

USERS = 2000
"""Users the load picks from."""
UNREAD = range(USERS, USERS + 200)
"""Users loaded but left out of the load, so the ACL test reads them for the first time."""
RUN_S = 3.0
REAL = frozenset({"redis", "cache"})


@dataclass(frozen=True)
class Served:
    """The service's URL and its Redis."""

    url: str
    redis: LocalRedis


@pytest.fixture(scope="module")
def served(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A ScoringService at default settings on one worker, over its own Redis."""
    # Redis answers at once however busy the machine: an answer that is not real must be
    # featserve's doing (service.harness.realtime).
    with LocalRedis(realtime=True) as redis_server:
        load_demo_data(redis_server.url, UNREAD.stop, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home, redis_server, tmp_path_factory.mktemp("logs"), FEATSERVE_WORKERS="1"
        )
        try:
            yield Served(url, redis_server)
        finally:
            stop(process)


def closed_loop(url: str, connections: int, duration_s: float) -> tuple[list[Sample], Counter[str]]:
    """``connections`` keep-alive connections posting ``/score`` back to back (the one load
    driver, ``service.harness.load``); the samples, and the ``Retry-After`` values seen."""
    bodies = [json.dumps({"entity_id": f"u{i:06d}", "amount": 12.5}).encode() for i in range(USERS)]
    retry_after: Counter[str] = Counter()

    def note(sample: Sample, response: Response | None) -> None:
        if response is not None and "retry-after" in response.headers:
            retry_after[response.headers["retry-after"]] += 1

    plan = LoadPlan(duration_s=duration_s, concurrency=connections)
    samples = asyncio.run(drive(Endpoint.parse(f"{url}/score"), bodies, plan, observe=note))
    return samples, retry_after


@pytest.mark.parametrize("connections", [16, 64])
def test_every_answer_is_real_or_a_refusal_that_says_when_to_retry(
    served: Served, connections: int
) -> None:
    samples, retry_after = closed_loop(served.url, connections, RUN_S)
    statuses = Counter(sample.status for sample in samples)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 100, statuses
    # Every refusal, and nothing else, says when to come back: in one second.
    assert retry_after == Counter({"1": statuses[503]})
    mixes = [sample.mix for sample in samples if sample.status == 200]
    assert all(mix is not None and mix.answers == 1 for mix in mixes)
    real = sum(1 for mix in mixes if mix and mix.degraded == 0 and set(dict(mix.sources)) <= REAL)
    assert real >= 0.99 * len(mixes), Counter(mix.sources for mix in mixes if mix)


def score(client: httpx.Client, entity_id: str) -> dict[str, Any]:
    response = client.post("/score", json={"entity_id": entity_id, "amount": 42.0})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_an_acl_that_refuses_the_keys_shows_and_clears(served: Served) -> None:
    unread = iter(f"u{i:06d}" for i in UNREAD)
    with (
        httpx.Client(base_url=served.url, timeout=10.0) as client,
        redis.Redis(port=served.redis.port) as admin,
    ):
        admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~other:*")
        try:
            during = [score(client, next(unread)) for _ in range(8)]
            status = client.get("/ops/status").json()
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "allkeys")
        after: list[dict[str, Any]] = []

        def reads_redis_again() -> bool:
            after.append(score(client, next(unread)))
            return after[-1]["sources"] == {"features": "redis"}

        wait_until(reads_redis_again, timeout_s=10, poll_s=0.05)
        status_after = client.get("/ops/status").json()
        read_during = score(client, during[0]["entity_id"])
    assert [answer["sources"] for answer in during] == [{"features": "unavailable"}] * 8
    reasons = [answer["degraded"]["features"] for answer in during]
    # Five refusals open the breaker (FEATSERVE_BREAKER_FAILURES); then Redis is skipped,
    # but for a probe each second, refused again.
    assert reasons[:5] == ["error_reply"] * 5, reasons
    assert set(reasons[5:]) <= {"error_reply", "breaker_open"} and "breaker_open" in reasons
    assert "NOPERM" in status["redis"]
    assert status["breakers"]["redis"]["state"] in ("open", "half_open")
    assert "NOPERM" in status["breakers"]["redis"]["reason"]
    # Until the breaker's probe succeeded, every answer said why it was blind.
    assert all(answer.get("degraded") for answer in after[:-1])
    redis_after = (status_after["redis"], status_after["breakers"]["redis"]["state"])
    assert redis_after == ("up", "closed")
    # Read during the fault: its defaults were not kept as if Redis had said so.
    assert read_during["sources"] == {"features": "redis"}
