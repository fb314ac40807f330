"""Shared fixtures: real Redis servers on free loopback ports, and clients for them.

Every ``FEATSERVE_*`` and ``OTEL_*`` variable of the caller's environment is dropped
when the tests start, so the settings a test builds are the ones it states; then
``FEATSERVE_PROJECT`` names the example project (``examples/fraud``).

``redis_url`` points at ``REDIS_URL`` when it is set (its database is
flushed before each test: give the tests a scratch database) and otherwise
at a server this session starts.  Tests that kill or pause Redis ask for
``own_redis``, a server of their own, whatever ``REDIS_URL`` says.
``dynamodb_table`` is a new table on a moto server the session starts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from features.settings import Settings
from features.stores.dynamodb import create_table, dynamodb_client
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT
from tests.support.moto_server import aws_env, moto_server

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# Tests state the settings they need: a shell's FEATSERVE_CACHE_TTL_S=0 or OTEL_* must not change
# what Settings() builds here, nor reach the services the tests serve. REDIS_URL stays (above).
for _name in [name for name in os.environ if name.startswith(("FEATSERVE_", "OTEL_"))]:
    del os.environ[_name]
# The project every test works on unless it says otherwise: the example in examples/fraud.
os.environ["FEATSERVE_PROJECT"] = str(EXAMPLE_PROJECT)


@pytest.fixture(scope="session")
def _session_redis_url() -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with LocalRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(_session_redis_url: str) -> str:
    """A Redis URL whose database is empty when the test starts."""
    with redis.Redis.from_url(_session_redis_url) as client:
        client.flushdb()
    return _session_redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client for inspecting what the code under test did."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings pointed at ``redis_url``, with Redis timeouts of 5 s instead of 50-100 ms.

    The fail-fast defaults turn a machine that stalls for a moment (CI's shared vCPUs stall
    for tens of milliseconds at times) into a ``StoreTimeout``; tests about time build their
    own ``Settings``.
    """
    return Settings(
        redis_url=redis_url, redis_socket_timeout_ms=5000.0, redis_connect_timeout_ms=5000.0
    )


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
    """A server only this test uses, free to be killed, paused and restarted."""
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (DynamoDB and the rest of AWS, in memory) on a free loopback port."""
    with moto_server() as url:
        yield url


@pytest.fixture
def dynamodb_table(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty table on the moto server; the AWS variables point at it."""
    aws_env(monkeypatch, moto_url)
    name = f"features-{uuid.uuid4().hex}"
    client = dynamodb_client()
    create_table(client, name)
    client.close()
    return name
