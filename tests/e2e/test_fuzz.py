"""Fuzzing the served API from its own OpenAPI spec: no generated request may get a 5xx.

Schemathesis turns ``/docs.json`` into Hypothesis strategies: positive cases
follow the schema (valid shapes, odd values within them: huge numbers,
unusual Unicode, boundary lengths), negative cases break it on purpose.
Every request carries the write token, so ``/push`` is fuzzed too.  The
run is bounded by a count of examples per mode (a few seconds each); a
failure prints the request as a curl command.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import start_service, stop

EXAMPLES_PER_MODE = 150


@dataclass
class FuzzTarget:
    url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def target(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    token = secrets.token_urlsafe(24)
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_WRITE_TOKEN=token,
        )
        try:
            yield FuzzTarget(url, {"Authorization": f"Bearer {token}"})
        finally:
            stop(process)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(target: FuzzTarget, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{target.url}/docs.json")
    operations = schema.include(method="POST")
    strategy = operations.as_strategy(generation_mode=mode, headers=target.headers)

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def no_server_error(case: Case) -> None:
        response = case.call(base_url=target.url, timeout=10)
        assert response.status_code < 500, (
            f"{response.status_code} {response.text[:300]}\n{case.as_curl_command()}"
        )

    no_server_error()
