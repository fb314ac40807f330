"""A real ``bentoml serve`` in a subprocess, over a real Redis with demo data.

The model is trained into a temporary BentoML home once per session, in a
subprocess, so the tests never touch the user's model store.  The shared
service runs with a write token, which its client sends with every request.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.served import ROOT, start_service, stop, train_small_model

__all__ = ["PATIENT", "ROOT", "RunningService", "start_service", "stop"]

DEMO_USERS = 300

PATIENT = {"FEATSERVE_FEATURE_DEADLINE_MS": "1000", "FEATSERVE_REDIS_SOCKET_TIMEOUT_MS": "1000"}
"""For a service whose reads must succeed, in a test that is not about time: a feature
deadline and a Redis socket timeout that a loaded machine does not reach.  The shipped 10 ms
and 50 ms turn a stall of the test machine into a fallback answer; tests about deadlines and
timeouts state their own."""


@dataclass
class RunningService:
    """A served ScoringService, its Redis, and an HTTP client for it."""

    url: str
    redis: LocalRedis
    client: httpx.Client
    log_path: Path
    write_token: str


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home holding a freshly trained (small) fraud model."""
    home = tmp_path_factory.mktemp("bentoml-home")
    train_small_model(home)
    return home


@pytest.fixture(scope="module")
def service(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The service over its own Redis holding demo users u000000..u000299."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, DEMO_USERS, tmp_path_factory.mktemp("demo"))
        token = secrets.token_urlsafe(24)
        process, url, log_path = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_CACHE_TTL_S="0",
            FEATSERVE_WRITE_TOKEN=token,
            **PATIENT,
        )
        headers = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
                yield RunningService(url, redis_server, client, log_path, token)
        finally:
            stop(process)
