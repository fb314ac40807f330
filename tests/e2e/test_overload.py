"""Overload, end to end: closed-loop connections on one worker at default settings.

Every answer must be real (features from Redis or the cache) or an explicit,
immediate refusal (503 with ``Retry-After``): a saturated worker must never
answer from training defaults or stale values while Redis is healthy.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.cli.demo import load_demo_data
from service.harness.load import encode_request, exchange
from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import start_service, stop

USERS = 2000
RUN_S = 3.0
REAL = frozenset({"redis", "cache"})


@dataclass(frozen=True)
class Answer:
    """One request's outcome: status 0 when no HTTP answer came."""

    status: int
    retry_after: str | None
    sources: tuple[str, ...]


@pytest.fixture(scope="module")
def url(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FraudScorer at default settings on one worker, over its own Redis."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, USERS, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home, redis_server, tmp_path_factory.mktemp("logs"), FEATSERVE_WORKERS="1"
        )
        try:
            yield url
        finally:
            stop(process)


async def closed_loop(url: str, connections: int, duration_s: float) -> list[Answer]:
    """``connections`` keep-alive connections posting ``/score`` back to back."""
    host, port = url.removeprefix("http://").split(":")
    answers: list[Answer] = []
    end = time.monotonic() + duration_s

    async def connection(seed: int) -> None:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < end:
                body = json.dumps(
                    {"entity_id": f"u{rng.randrange(USERS):06d}", "amount": 12.5}
                ).encode()
                try:
                    response = await asyncio.wait_for(
                        exchange(reader, writer, encode_request(host, int(port), "/score", body)),
                        10,
                    )
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    answers.append(Answer(0, None, ()))
                    return
                sources = ()
                if response.status == 200:
                    sources = tuple(json.loads(response.body)["sources"].values())
                answers.append(
                    Answer(response.status, response.headers.get("retry-after"), sources)
                )
        finally:
            writer.close()

    await asyncio.gather(*(connection(seed) for seed in range(connections)))
    return answers


@pytest.mark.parametrize("connections", [16, 64])
def test_every_answer_is_real_or_an_immediate_refusal(url: str, connections: int) -> None:
    answers = asyncio.run(closed_loop(url, connections, RUN_S))
    statuses = Counter(answer.status for answer in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 100, statuses
    refusals = [answer for answer in answers if answer.status == 503]
    assert all(answer.retry_after == "1" for answer in refusals)
    served = [answer for answer in answers if answer.status == 200]
    real = sum(1 for answer in served if set(answer.sources) <= REAL)
    assert real >= 0.99 * len(served), Counter(answer.sources for answer in served)
