"""``featserve sla`` against a real ``bentoml serve``: generous budgets pass, impossible fail.

The deployment requires a read token, which ``featserve sla`` takes from the environment.
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cli import sla
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE
from service.harness.load import parse_server_timing
from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import PATIENT, start_service, stop

USERS = 200
READ_TOKEN = secrets.token_urlsafe(24)


def featserve_sla(argv: list[str]) -> int:
    """Parse ``argv`` as ``featserve sla`` does and run it."""
    parser = argparse.ArgumentParser(prog="featserve")
    sla.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sla", *argv])
    code: int = args.run(args)
    return code


@pytest.fixture(scope="module")
def score_url(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``/score`` of a served ScoringService over demo users u000000..u000199."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, USERS, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_READ_TOKEN=READ_TOKEN,
            **PATIENT,
        )
        try:
            yield f"{url}/score"
        finally:
            stop(process)


@pytest.fixture(autouse=True)
def read_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATSERVE_READ_TOKEN", READ_TOKEN)


def test_generous_budget_passes_with_real_answers_and_plots(
    score_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "sla.png"
    argv = [
        "--url", score_url, "--total-ms", "5000", "--features-ms", "5000",
        "--rate", "50", "--duration", "2", "--warmup", "0.5",
        "--entities", f"u000000..u{USERS - 1:06d}", "--plot", str(plot), "--json",
    ]  # fmt: skip
    assert featserve_sla(argv) == 0
    assert plot.stat().st_size > 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["met"] is True
    assert verdict["statuses"] == {"200": verdict["requests"]}
    # Every demo user is in Redis: each answer's one group came from Redis or the cache.
    assert verdict["answers"] == verdict["requests"] > 0
    assert sum(verdict["sources"].get(s, 0) for s in ("redis", "cache")) == verdict["answers"]
    assert verdict["degraded"] == 0


def test_impossible_budget_exits_non_zero(score_url: str) -> None:
    argv = [
        "--url", score_url, "--profile", "ads", "--total-ms", "0.001",
        "--concurrency", "2", "--duration", "2", "--warmup", "0.5", "--entities", str(USERS),
    ]  # fmt: skip
    assert featserve_sla(argv) == sla.EXIT_BREACH


def test_non_2xx_answers_fail(score_url: str) -> None:
    missing = score_url.rsplit("/", 1)[0] + "/no_such_endpoint"
    argv = ["--url", missing, "--total-ms", "5000", "--duration", "2", "--warmup", "0"]
    assert featserve_sla(argv) == sla.EXIT_BREACH


def test_without_the_token_every_answer_is_a_401_and_fails(
    score_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEATSERVE_READ_TOKEN")
    monkeypatch.delenv("FEATSERVE_WRITE_TOKEN", raising=False)
    argv = ["--url", score_url, "--total-ms", "5000", "--duration", "1", "--warmup", "0"]
    assert featserve_sla(argv) == sla.EXIT_BREACH


def test_usage_errors() -> None:
    assert featserve_sla(["--url", "ftp://x/score", "--duration", "1"]) == sla.EXIT_USAGE
    assert featserve_sla(["--url", "http://127.0.0.1:1/score", "--entities", "u5..u1"]) == (
        sla.EXIT_USAGE
    )


def test_entity_ids_from_a_range_or_a_count() -> None:
    assert sla.entity_ids("u0098..u0101", EXAMPLE) == ["u0098", "u0099", "u0100", "u0101"]
    assert sla.entity_ids("2", EXAMPLE) == ["u000000", "u000001"]


def test_server_timing_is_parsed_into_milliseconds() -> None:
    header = 'cache;dur=0.02, redis;desc="store";dur=0.19, miss, total;dur=0.71'
    assert parse_server_timing(header) == {"cache": 0.02, "redis": 0.19, "total": 0.71}


@pytest.fixture
def own_service(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, LocalRedis]]:
    """``/score`` of a service of this test's own, over its own Redis, with the settings the
    test names in ``request.param``; no cache, so every answer asks Redis."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, USERS, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_READ_TOKEN=READ_TOKEN,
            FEATSERVE_CACHE_TTL_S="0",
            **{**PATIENT, **getattr(request, "param", {})},
        )
        try:
            yield f"{url}/score", redis_server
        finally:
            stop(process)


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """Run ``featserve sla ... --json``; its exit code and its verdict."""
    code = featserve_sla([*argv, "--json"])
    verdict: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, verdict


def test_fast_answers_on_training_defaults_fail_the_sla(
    own_service: tuple[str, LocalRedis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, redis_server = own_service
    # Budgets a loaded test machine cannot break: what fails the run must be the answers.
    argv = [
        "--url", url, "--total-ms", "1000", "--features-ms", "1000", "--rate", "50",
        "--duration", "2", "--warmup", "0.5", "--entities", str(USERS),
    ]  # fmt: skip
    code, healthy = run_json(argv, capsys)
    assert (code, healthy["met"], healthy["degraded"]) == (0, True, 0)
    redis_server.stop()
    code, blind = run_json(argv, capsys)
    assert (code, blind["met"]) == (sla.EXIT_BREACH, False)
    assert blind["statuses"] == {"200": blind["requests"]}
    assert blind["degraded_pct"] > 95
    assert blind["sources"].get("redis", 0) == 0
    # Blind answers are quick: every latency check holds; the degraded share alone fails.
    checks = {check["what"]: check["holds"] for check in blind["checks"]}
    assert checks == {
        "total (client) p99": True,
        "features p99": True,
        "degraded answers": False,
        "shed requests": True,
    }


@pytest.mark.parametrize("own_service", [{"FEATSERVE_MAX_IN_FLIGHT": "1"}], indirect=True)
def test_shed_load_is_counted_apart_and_bounded(
    own_service: tuple[str, LocalRedis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = own_service
    argv = [
        "--url", url, "--total-ms", "5000", "--features-ms", "5000", "--concurrency", "16",
        "--duration", "2", "--warmup", "0.5", "--entities", str(USERS),
    ]  # fmt: skip
    code, verdict = run_json(argv, capsys)
    # One request at a time, sixteen connections: most are refused with 503 and Retry-After.
    assert verdict["shed"] > 0
    assert verdict["statuses"]["503"] == verdict["shed"]
    assert verdict["failed"] == 0
    assert (code, verdict["met"]) == (sla.EXIT_BREACH, False)  # --max-shed is 0 % by default
    code, allowed = run_json([*argv, "--max-shed", "100"], capsys)
    assert (code, allowed["met"], allowed["failed"]) == (0, True, 0)
    assert allowed["degraded"] == 0
