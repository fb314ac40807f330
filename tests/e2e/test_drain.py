"""A restart drops nothing: SIGTERM to `bentoml serve` under closed-loop load.

The service drains for FEATSERVE_DRAIN_S: /readyz turns 503 at once, every answer closes its
connection, and only then does it stop accepting. Under /score and /push load from clients
that reconnect at once, no request on a connection the server had taken is reset; new
connections after the drain are refused (counted apart); every acknowledged push is in Redis.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from service.cli.demo import load_demo_data
from service.harness.load import Endpoint, LoadPlan, Sample, drive
from service.harness.local_redis import LocalRedis
from service.harness.served import start_service, stop
from service.harness.waiting import wait_until
from tests.e2e.conftest import PATIENT

DRAIN_S = 2.0
PUSHES = 400


def push_bodies(event_s: float) -> list[bytes]:
    """One update per body, each to an entity of its own, so each can be found afterwards."""
    return [
        json.dumps(
            {
                "updates": [
                    {
                        "entity_id": f"d{index:05d}",
                        "event_timestamp": event_s,
                        "values": {"tx_count_1h": index},
                    }
                ]
            }
        ).encode()
        for index in range(PUSHES)
    ]


def test_sigterm_under_load_resets_nothing_and_loses_no_acknowledged_push(
    bentoml_home: Path, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    with LocalRedis() as server:
        load_demo_data(server.url, 50, tmp_path / "demo")
        process, url, log_path = start_service(
            bentoml_home,
            server,
            tmp_path,
            FEATSERVE_WRITE_TOKEN=token,
            FEATSERVE_DRAIN_S=str(DRAIN_S),
            FEATSERVE_CACHE_TTL_S="0",
            **PATIENT,
        )
        try:
            scores = [
                json.dumps({"entity_id": f"u{i:06d}", "amount": 10.0 + i}).encode()
                for i in range(50)
            ]
            pushes = push_bodies(time.time())
            answered = threading.Event()
            answered_at: list[float] = []
            results: dict[str, list[Sample]] = {}

            def observe(sample: Sample, _: object) -> None:
                if sample.status == 200:
                    answered_at.append(time.monotonic())
                    answered.set()

            async def load() -> None:
                plan = LoadPlan(duration_s=DRAIN_S + 6.0, concurrency=6, timeout_s=5.0)
                push_plan = LoadPlan(duration_s=DRAIN_S + 6.0, concurrency=2, timeout_s=5.0)
                results["score"], results["push"] = await asyncio.gather(
                    drive(Endpoint.parse(f"{url}/score"), scores, plan, observe=observe),
                    drive(Endpoint.parse(f"{url}/push", token=token), pushes, push_plan, seed=9),
                )

            loader = threading.Thread(target=lambda: asyncio.run(load()))
            loader.start()
            assert answered.wait(30), "the load never got an answer"
            process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            # Unready at once, while the drain still answers.
            wait_until(lambda: _readyz(url) == 503, timeout_s=DRAIN_S, poll_s=0.05)
            loader.join(60)
            assert not loader.is_alive()
            assert process.wait(60) == 0, log_path.read_text()[-3000:]
        finally:
            stop(process)
        every = results["score"] + results["push"]
        errors = Counter(sample.error for sample in every if sample.status == 0)
        assert errors["reset"] == errors["timeout"] == errors["framing"] == 0, errors
        statuses = Counter(sample.status for sample in every)
        assert set(statuses) <= {200, 0}, statuses
        # The drain answered for its whole length, then new connections were refused.
        assert max(answered_at) - signalled_at >= 0.75 * DRAIN_S
        assert errors["refused"] > 0
        acknowledged = {s.body_index for s in results["push"] if s.status == 200}
        with redis.Redis.from_url(server.url) as check:
            for index in acknowledged:
                stored = check.hget(f"user:{{d{index:05d}}}:features", "tx_count_1h")
                assert stored == str(index).encode(), index


def _readyz(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code
    except httpx.HTTPError:
        return 0
