"""The HTTP API end to end: ``bentoml serve`` in a subprocess over a real Redis."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis, free_port
from service.harness.served import EXAMPLE_PROJECT, clean_environment
from service.harness.waiting import wait_until
from tests.e2e.conftest import DEMO_USERS, PATIENT, ROOT, RunningService, start_service, stop

SATURDAY_NOON = 1764417600  # 2025-11-29 12:00 UTC
FEATURE_DEFAULTS = dict(EXAMPLE_REGISTRY.group("user", "features").defaults)
BATCH_MAX = Settings().batch_max


def parse_server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        stages[name] = float(duration)
    return stages


def score(service: RunningService, **body: Any) -> httpx.Response:
    return service.client.post("/score", json=body)


def test_score_answers_with_score_sources_and_timing(service: RunningService) -> None:
    response = score(service, entity_id="u000123", amount=250.0, timestamp=SATURDAY_NOON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"entity_id", "score", "is_fraud", "threshold", "sources", "timing_ms"}
    assert body["entity_id"] == "u000123"
    assert 0.0 <= body["score"] <= 1.0
    assert body["is_fraud"] == (body["score"] >= body["threshold"])
    assert body["sources"] == {"features": "redis"}
    assert {"features", "derive", "inference", "total"} <= set(body["timing_ms"])


def test_server_timing_header_equals_the_body(service: RunningService) -> None:
    response = score(service, entity_id="u000007", amount=10.0)
    header = parse_server_timing(response.headers["Server-Timing"])
    assert header == response.json()["timing_ms"]
    assert header["total"] >= header["features"] >= header["redis"]


def test_an_unknown_entity_is_scored_on_training_defaults(service: RunningService) -> None:
    response = score(service, entity_id="nobody", amount=25.0, timestamp=SATURDAY_NOON)
    assert response.status_code == 200
    body = response.json()
    assert body["sources"] == {"features": "default"}
    assert 0.0 < body["score"] < 0.5


def test_score_batch_matches_single_scores_and_uses_one_round_trip(
    service: RunningService,
) -> None:
    requests = [
        {"entity_id": f"u{i:06d}", "amount": 20.0 * (i + 1), "timestamp": SATURDAY_NOON}
        for i in range(5)
    ] + [{"entity_id": "stranger", "amount": 80.0, "timestamp": SATURDAY_NOON}]
    with redis.Redis.from_url(service.redis.url) as inspector:
        inspector.config_resetstat()
        response = service.client.post("/score_batch", json={"requests": requests})
        hmget_calls = inspector.info("commandstats")["cmdstat_hmget"]["calls"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert hmget_calls == len(requests)
    assert [r["entity_id"] for r in body["results"]] == [r["entity_id"] for r in requests]
    assert [r["sources"]["features"] for r in body["results"]] == ["redis"] * 5 + ["default"]
    assert parse_server_timing(response.headers["Server-Timing"]) == body["timing_ms"]
    for request, result in zip(requests, body["results"], strict=True):
        single = score(service, **request).json()
        assert math.isclose(result["score"], single["score"], rel_tol=1e-12)


def test_features_shows_values_sources_and_ages(service: RunningService) -> None:
    with redis.Redis.from_url(service.redis.url) as inspector:
        stored_count = int(inspector.hget("user:{u000042}:features", "tx_count_24h") or -1)
        event_s = {
            "features": int(inspector.hget("user:{u000042}:features", "_event_ms") or 0) / 1000,
            "recent_items": inspector.zrevrange("user:{u000042}:recent_items", 0, 0, True)[0][1],
            "embedding": int(inspector.get("user:{u000042}:embedding:_event_ms") or 0) / 1000,
        }
    before = time.time()
    response = service.client.post("/features", json={"entity_ids": ["u000042", "ghost"]})
    after = time.time()
    assert response.status_code == 200, response.text
    known, ghost = response.json()["entities"]
    assert known["groups"]["features"]["source"] == "redis"
    assert known["groups"]["features"]["values"]["tx_count_24h"] == stored_count
    assert len(known["groups"]["embedding"]["values"]["embedding"]) == 16
    assert len(known["groups"]["recent_items"]["values"]["recent_items"]) == 10
    for name, at in event_s.items():
        assert before - at - 0.001 <= known["groups"][name]["age_s"] <= after - at + 0.001, name
    assert ghost["groups"]["features"] == {
        "source": "default",
        "values": FEATURE_DEFAULTS,
        "defaulted": list(FEATURE_DEFAULTS),
        "age_s": None,
    }


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/score", {"amount": 1.0}, "entity_id: Field required"),
        ("/score", {"entity_id": "u1", "amount": "lots"}, "amount: Input should be a valid number"),
        ("/score", {"entity_id": "u1", "amount": "12.5"}, "amount: Input should be a valid number"),
        (
            "/score",
            {"entity_id": "u 1", "amount": 1.0},
            "entity_id: Value error, entity id 'u 1' holds whitespace",
        ),
        ("/score", {"entity_id": "u{1}", "amount": 1.0}, "a brace"),
        ("/score", {"entity_id": "", "amount": 1.0}, "entity_id: Value error, entity id is empty"),
        (
            "/features",
            {"entity_ids": ["ok", "x" * 129]},
            "entity_ids.1: Value error, entity id is 129",
        ),
        ("/score", {"entity_id": "u1", "amount": -5.0}, "amount: Input should be greater than"),
        ("/score", {"entity_id": "u1", "amount": 1.0, "timestamp": "noon"}, "timestamp"),
        ("/score_batch", {"requests": []}, "requests: List should have at least 1 item"),
        (
            "/score_batch",
            {"requests": [{"entity_id": "u1", "amount": 1.0}] * (BATCH_MAX + 1)},
            f"requests: List should have at most {BATCH_MAX} items",
        ),
        (
            "/score_batch",
            {"requests": [{"entity_id": "u1", "amount": 1.0, "amout": 2}]},
            "requests.0.amout: Extra inputs are not permitted",
        ),
        ("/features", {"entity_ids": []}, "entity_ids: List should have at least 1 item"),
        (
            "/features",
            {"entity_ids": ["u1"], "groups": ["risk"]},
            "unknown feature group user:risk",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(
    service: RunningService, path: str, body: dict[str, Any], names: str
) -> None:
    response = service.client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert names in response.json()["error"]


def test_a_body_that_is_not_json_is_a_400(service: RunningService) -> None:
    response = service.client.post(
        "/score", content=b"entity_id=u1", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["error"]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, in a scrape."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_metrics_count_stages_and_sources(service: RunningService) -> None:
    counted = {
        "featserve_stage_seconds_count": {"endpoint": "score", "stage": "inference"},
        "featserve_feature_groups_total": {"group": "features", "source": "redis"},
        "featserve_cache_lookups_total": {"result": "miss"},
        "featserve_feature_age_seconds_count": {"group": "features", "source": "redis"},
    }
    before = service.client.get("/metrics").text
    assert score(service, entity_id="u000001", amount=5.0).json()["sources"] == {
        "features": "redis"
    }
    after = service.client.get("/metrics").text
    for name, labels in counted.items():
        assert metric(after, name, **labels) == metric(before, name, **labels) + 1, name


def test_the_service_refuses_to_start_without_redis_url(bentoml_home: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {
        **clean_environment(),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "FEATSERVE_PROJECT": str(EXAMPLE_PROJECT),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:ScoringService",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # BentoML restarts a worker that fails to start, again and again: none ever serves.
        said = "REDIS_URL is not set: point it at the online store"
        wait_until(lambda: said in log_path.read_text(), timeout_s=60, poll_s=0.2)
        for _ in range(3):
            assert not ready(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def own_service(
    bentoml_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RunningService]:
    """A service of this test's own over its own Redis holding demo users, with the settings
    in ``request.param``: free to kill its Redis."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, DEMO_USERS, tmp_path / "demo")
        process, url, log_path = start_service(
            bentoml_home,
            redis_server,
            tmp_path,
            FEATSERVE_CACHE_TTL_S="0",
            **{**PATIENT, **getattr(request, "param", {})},
        )
        try:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                yield RunningService(url, redis_server, client, log_path, "")
        finally:
            stop(process)


@pytest.mark.parametrize(
    ("own_service", "seen_source"),
    [({}, "stale"), ({"FEATSERVE_STALE_CACHE_MAXSIZE": "0"}, "unavailable")],
    indirect=["own_service"],
    ids=["stale-values-kept", "stale-cache-off"],
)
def test_redis_down_still_answers_from_stale_values_and_defaults_then_recovers(
    own_service: RunningService, seen_source: str
) -> None:
    service = own_service
    status = service.client.get("/ops/status").json()
    assert status["redis"] == "up"
    assert status["inference"].startswith("compiled trees")
    assert score(service, entity_id="u000123", amount=1.0).json()["sources"] == {
        "features": "redis"
    }
    service.redis.kill()
    try:
        degraded_before = metrics_of(service, "featserve_degraded_answers_total")
        for _ in range(3):
            seen = score(service, entity_id="u000123", amount=250.0)
            assert seen.status_code == 200, seen.text
            assert seen.json()["sources"] == {"features": seen_source}
            assert seen.json()["degraded"]["features"] in ("store_error", "breaker_open")
            if seen_source == "stale":
                assert 0 <= seen.json()["stale_age_s"]["features"] < 3600
            else:
                assert "stale_age_s" not in seen.json()
            unseen = score(service, entity_id="u000299", amount=250.0)
            assert unseen.status_code == 200, unseen.text
            assert unseen.json()["sources"] == {"features": "unavailable"}
            assert unseen.json()["degraded"]["features"] in ("store_error", "breaker_open")
        batch = service.client.post(
            "/score_batch", json={"requests": [{"entity_id": "u000298", "amount": 3.0}]}
        ).json()
        [result] = batch["results"]
        assert (result["sources"], set(result["degraded"])) == (
            {"features": "unavailable"},
            {"features"},
        )
        described = service.client.post("/features", json={"entity_ids": ["u000297"]}).json()
        [entity] = described["entities"]
        assert set(entity["degraded"]) == {"features", "recent_items", "embedding"}
        degraded = metrics_of(service, "featserve_degraded_answers_total")
        counted = {
            endpoint: degraded[endpoint] - degraded_before[endpoint] for endpoint in degraded
        }
        assert counted == {"score": 6, "score_batch": 1, "features": 1}
        assert service.client.get("/readyz").status_code == 200
        assert service.client.get("/ops/status").json()["redis"].startswith("down")
    finally:
        service.redis.start()
    # The demo data died with the server; what matters is that Redis is asked again
    # once the breaker lets a probe through.
    with redis.Redis.from_url(service.redis.url) as writer:
        writer.hset("user:{u000123}:features", "tx_count_1h", 1)
    wait_until(
        lambda: (
            score(service, entity_id="u000123", amount=1.0).json()["sources"]
            == {"features": "redis"}
        ),
        timeout_s=15,
        poll_s=0.1,
    )


def metrics_of(service: RunningService, name: str) -> dict[str, float]:
    """``name``'s count per endpoint, all reasons together."""
    text = service.client.get("/metrics").text
    return {
        endpoint: metric(text, name, endpoint=endpoint)
        for endpoint in ("score", "score_batch", "features")
    }
