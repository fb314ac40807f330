"""Every query of the shipped dashboard and rules names metrics a running service exposes.

A real ``bentoml serve`` (with a SQLite backing store, Redis behind a proxy) answers a
few requests of each kind: scores, a batch, ``/features``, a push, a refused token, bad
input, and an answer the feature deadline degraded.  Its ``/metrics`` must then hold every
metric the dashboard and the rules select (histograms by their ``_bucket``, ``_sum`` and
``_count`` series), with every label they match on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from tests.e2e.conftest import start_service, stop
from tests.support.deploy_files import (
    dashboard_expressions,
    recorded_names,
    rule_expressions,
    selectors,
)

TOKEN = "t" * 24


@dataclass(frozen=True)
class Scrape:
    """What ``/metrics`` exposed."""

    samples: list[tuple[str, dict[str, str], float]]

    @property
    def labels(self) -> dict[str, set[str]]:
        """Each series name with the label names it carries."""
        found: dict[str, set[str]] = {}
        for name, labels, _ in self.samples:
            found.setdefault(name, set()).update(labels)
        return found

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` that carry ``labels``."""
        return sum(
            value
            for sample, held, value in self.samples
            if sample == name and labels.items() <= held.items()
        )


@pytest.fixture(scope="module")
def scrape(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    with LocalRedis() as redis_server, TcpProxy("127.0.0.1", redis_server.port) as proxy:
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        backing = tmp_path_factory.mktemp("backing") / "backing.sqlite3"
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            REDIS_URL=proxy.redis_url,
            FEATSERVE_BACKING_STORE=f"sqlite:{backing}",
            FEATSERVE_WRITE_TOKEN=TOKEN,
        )
        try:
            yield drive_and_scrape(url, proxy)
        finally:
            stop(process)


def drive_and_scrape(url: str, proxy: TcpProxy) -> Scrape:
    """A few requests of each kind, then one scrape of ``/metrics``."""
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for entity in ("u000001", "u000002", "u000001", "nobody"):
            assert client.post("/score", json={"entity_id": entity, "amount": 5.0}).is_success
        batch = [{"entity_id": f"u{i:06d}", "amount": 2.0} for i in range(5)]
        assert client.post("/score_batch", json={"requests": batch}).is_success
        assert client.post("/features", json={"entity_ids": ["u000003", "u000004"]}).is_success
        update = {"entity_id": "u000005", "event_timestamp": int(time.time()), "values": {}}
        update["values"] = {"tx_count_1h": 3}
        pushed = client.post("/push", json={"updates": [update]}, headers=authorized)
        assert pushed.is_success, pushed.text
        assert client.post("/push", json={"updates": [update]}).status_code == 401
        assert client.post("/score", json={"entity_id": "u 1", "amount": 1.0}).status_code == 400
        assert client.get("/wp-admin/setup-config.php").status_code == 404
        proxy.set_latency(0.1)  # ten times the feature deadline: the answer is degraded
        try:
            late = client.post("/score", json={"entity_id": "u000006", "amount": 1.0}).json()
        finally:
            proxy.set_latency(0.0)
        assert late["degraded"] == {"features": "deadline"}
        text = client.get("/metrics").text
    return Scrape(
        [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    )


def test_every_dashboard_query_names_exposed_metrics_and_labels(scrape: Scrape) -> None:
    for expression in dashboard_expressions():
        for selector in selectors(expression):
            assert selector.metric in scrape.labels, f"{selector.metric} in {expression}"
            assert selector.labels <= scrape.labels[selector.metric], expression


def test_every_rule_names_exposed_metrics_or_the_rules_own_records(scrape: Scrape) -> None:
    recorded = recorded_names()
    for expression in rule_expressions():
        for selector in selectors(expression):
            if selector.metric in recorded:
                continue
            assert selector.metric in scrape.labels, f"{selector.metric} in {expression}"
            assert selector.labels <= scrape.labels[selector.metric], expression


def test_the_drive_shows_in_the_metrics_the_alerts_read(scrape: Scrape) -> None:
    age = "featserve_feature_age_seconds_count"
    assert scrape.value(age, group="features", source="redis") >= 1
    assert scrape.value(age, group="recent_items") + scrape.value(age, group="embedding") >= 2
    assert scrape.value("featserve_answers_total", endpoint="score") == 5  # not the 400
    assert scrape.value("featserve_answers_total", endpoint="score_batch") == 5
    assert (
        scrape.value("featserve_degraded_answers_total", endpoint="score", reason="deadline") == 1
    )
    assert scrape.value("featserve_overload_refusals_total", path="/score") == 0
    requests = "bentoml_service_request_total"
    assert scrape.value(requests, endpoint="/push", http_response_code="401") == 1
    assert scrape.value(requests, endpoint="/score", http_response_code="400") == 1
    assert scrape.value("featserve_breaker_state", store="backing") == 0
    assert scrape.value("featserve_latency_budget_seconds", stage="total") == 0.05
    assert scrape.value("featserve_redis_pool_connections_limit") == 32


def test_request_metrics_are_labelled_by_route_or_other(scrape: Scrape) -> None:
    requests = "bentoml_service_request_total"
    assert scrape.value(requests, endpoint="other", http_response_code="404") == 1
    endpoints = {
        held["endpoint"]
        for name, held, _ in scrape.samples
        if name.startswith("bentoml_service")
        if "endpoint" in held
    }
    assert "other" in endpoints
    assert all(endpoint == "other" or endpoint.startswith("/") for endpoint in endpoints)
    assert not any("wp-admin" in endpoint for endpoint in endpoints)
