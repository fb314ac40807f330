"""The deployment files in docs/deploy: the Grafana dashboard and the Prometheus rules (valid,
and tested by promtool) and the Kubernetes manifest (consistent with the image).

Whether the metrics they name exist is checked against a running service
(``tests/e2e/test_dashboard_metrics.py``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.deploy_files import (
    CONTAINER_UID,
    CONTAINER_WRITABLE,
    DASHBOARD,
    KUBERNETES,
    RULES,
    RULES_TESTS,
    Selector,
    dashboard_expressions,
    dashboard_panels,
    promtool,
    selectors,
)


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_each_alert_fires_on_synthetic_series_and_stays_quiet_on_healthy_ones() -> None:
    tested = run_promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == alerts


def test_a_rules_file_promtool_refuses_fails_the_check(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: sum(\n")
    assert run_promtool("check", "rules", str(broken)).returncode != 0


def test_without_promtool_the_check_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is missing"):
        promtool(tmp_path / "promtool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="promtool is missing"):
        promtool(tmp_path / "promtool")


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 12
    # promtool checks PromQL in rule files only: each query becomes a recording rule.
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": expression}
                    for index, expression in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(as_rules))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_one_grafana_dashboard_on_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "featserve"
    [variable] = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    titles = " / ".join(panel["title"] for panel in panels)
    for topic in (
        "budget",
        "real answers",
        "came from",
        "Breaker",
        "Cache hit",
        "age",
        "Redis round trip",
    ):
        assert topic in titles, topic


def test_selectors_name_each_metric_and_the_labels_it_matches_on() -> None:
    found = selectors(
        'sum by (stage) (rate(featserve_stage_seconds_bucket{endpoint="score", stage=~"a|b"}[5m]))'
        " / on (stage) group_left () max by (stage) (featserve_latency_budget_seconds)"
    )
    assert found == {
        Selector("featserve_stage_seconds_bucket", frozenset({"endpoint", "stage"})),
        Selector("featserve_latency_budget_seconds", frozenset()),
    }
    with pytest.raises(ValueError):
        selectors("sum(")


def test_the_kubernetes_deployment_probes_runs_and_mounts_what_the_image_needs() -> None:
    deployment, service = yaml.safe_load_all(KUBERNETES.read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]
    assert container["args"] == ["--port", str(port["containerPort"])]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == CONTAINER_UID
    mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounted == set(CONTAINER_WRITABLE)
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["resources"]["requests"]["memory"]
    # Credentials come from a Secret, never from the manifest itself.
    assert container["envFrom"] == [{"secretRef": {"name": "featserve"}}]
    assert not [env for env in container.get("env", []) if "TOKEN" in env["name"]]
