"""Traces from a real ``bentoml serve`` to a real OTLP/HTTP receiver: a span per stage,
each a child of BentoML's request span."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from service.harness.tcp_proxy import TcpProxy
from service.harness.waiting import wait_until
from service.tracing import tracing_config
from tests.e2e.conftest import PATIENT, start_service, stop

SERVER_SPAN = 2  # OTLP's SpanKind.SPAN_KIND_SERVER


@dataclass
class Traced:
    """A traced service, the receiver of its spans and the proxy between it and Redis."""

    url: str
    receiver: OtlpReceiver
    proxy: TcpProxy


@pytest.fixture(scope="module")
def traced(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    with (
        LocalRedis() as redis_server,
        TcpProxy("127.0.0.1", redis_server.port) as proxy,
        OtlpReceiver() as receiver,
    ):
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            REDIS_URL=proxy.redis_url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            FEATSERVE_TRACE_SAMPLE_RATE="1",
            OTEL_BSP_SCHEDULE_DELAY="50",  # export every 50 ms, not every 5 s
            FEATSERVE_CACHE_TTL_S="0",  # each request reads Redis: sources do not depend on order
            # Every read is answered (the redis and decode stages are always there) unless a
            # test delays it past the deadline; the socket timeout outlasts that delay, so the
            # deadline is what fires.
            **{**PATIENT, "FEATSERVE_REDIS_SOCKET_TIMEOUT_MS": "5000"},
        )
        try:
            yield Traced(url, receiver, proxy)
        finally:
            stop(process)


def spans_of_trace(receiver: OtlpReceiver, stage: str) -> list[ReceivedSpan]:
    """Every span of the newest trace holding a span named ``stage``."""
    spans = receiver.spans()
    trace_id = [span.trace_id for span in spans if span.name == stage][-1]
    return [span for span in spans if span.trace_id == trace_id]


def test_each_stage_is_a_child_span_of_the_request(traced: Traced) -> None:
    url, receiver = traced.url, traced.receiver
    answer = httpx.post(f"{url}/score", json={"entity_id": "u000003", "amount": 25.0})
    assert answer.status_code == 200
    stages = set(answer.json()["timing_ms"])

    def whole_trace_in() -> bool:
        # The stage spans end (and may be exported) before the request span does.
        if not any(span.name == "inference" for span in receiver.spans()):
            return False
        return any(span.kind == SERVER_SPAN for span in spans_of_trace(receiver, "inference"))

    wait_until(whole_trace_in, 10.0)
    spans = spans_of_trace(receiver, "inference")
    [request] = [span for span in spans if span.kind == SERVER_SPAN and not span.parent_span_id]
    children = {span.name: span for span in spans if span.parent_span_id == request.span_id}
    assert {"cache", "redis", "decode", "features", "derive", "inference", "total"} <= stages
    assert stages <= set(children)
    for name in stages:
        child = children[name]
        assert request.start_ns <= child.start_ns <= child.end_ns <= request.end_ns
    features = children["features"].attributes
    assert features["featserve.entities"] == 1
    assert features["featserve.groups"] == ["features"]
    assert features["featserve.sources"] == ["redis=1"]
    assert features["featserve.deadline_fired"] is False
    assert not features.get("featserve.degraded")


def test_the_features_span_says_when_the_deadline_fired(traced: Traced) -> None:
    deadline_s = int(PATIENT["FEATSERVE_FEATURE_DEADLINE_MS"]) / 1000
    traced.proxy.set_latency(1.5 * deadline_s)
    try:
        answer = httpx.post(f"{traced.url}/score", json={"entity_id": "u000011", "amount": 5.0})
    finally:
        traced.proxy.set_latency(0.0)
    assert answer.status_code == 200
    assert answer.json()["degraded"] == {"features": "deadline"}

    def deadline_spans() -> list[ReceivedSpan]:
        return [
            span
            for span in traced.receiver.spans()
            if span.name == "features" and span.attributes.get("featserve.deadline_fired")
        ]

    wait_until(lambda: bool(deadline_spans()), 10.0)
    [features] = deadline_spans()
    assert features.attributes["featserve.degraded"] == ["deadline=1"]


def test_a_batch_says_how_many_entities_and_where_they_came_from(traced: Traced) -> None:
    url, receiver = traced.url, traced.receiver
    requests = [{"entity_id": f"u{i:06d}", "amount": 10.0} for i in range(5)]
    requests.append({"entity_id": "nobody", "amount": 10.0})
    answer = httpx.post(f"{url}/score_batch", json={"requests": requests})
    assert answer.status_code == 200
    wait_until(
        lambda: any(
            span.name == "features" and span.attributes.get("featserve.entities") == 6
            for span in receiver.spans()
        ),
        10.0,
    )
    [features] = [
        span
        for span in receiver.spans()
        if span.name == "features" and span.attributes["featserve.entities"] == 6
    ]
    assert sorted(features.attributes["featserve.sources"]) == ["default=1", "redis=5"]


def test_traces_are_off_without_an_endpoint_or_a_rate() -> None:
    assert tracing_config(Settings(trace_sample_rate=1.0)) is None
    assert tracing_config(Settings(otlp_endpoint="http://collector:4318")) is None
    config = tracing_config(Settings(otlp_endpoint="http://collector:4318", trace_sample_rate=0.1))
    assert config is not None and config["sample_rate"] == 0.1
