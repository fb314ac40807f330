"""The shipped Grafana dashboard and Prometheus rules, read for checking: their PromQL, the
metrics and labels it names, and ``promtool``.

``promtool`` comes from ``.ci/fetch-promtool`` (``make test`` runs it first), which puts
Debian's static binary in ``.tools/bin``; one on ``PATH`` does as well.  Without it a test
skips, except under CI (``CI`` set), where it fails: there the check must run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

__all__ = [
    "CONTAINER_UID",
    "CONTAINER_WRITABLE",
    "DASHBOARD",
    "KUBERNETES",
    "RULES",
    "RULES_TESTS",
    "Selector",
    "dashboard_expressions",
    "dashboard_panels",
    "promtool",
    "recorded_names",
    "rule_expressions",
    "selectors",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs/deploy/grafana/featserve-dashboard.json"
RULES = ROOT / "docs/deploy/prometheus/featserve-rules.yml"
RULES_TESTS = ROOT / "docs/deploy/prometheus/featserve-rules.test.yml"
KUBERNETES = ROOT / "docs/deploy/kubernetes/featserve.yaml"
CONTAINER_WRITABLE = ("/tmp", "/home/bentoml/prometheus_multiproc_dir")
"""What the image writes at run time (BentoML's metrics files, temporary files): the only
writable paths of a container run with a read-only root."""
CONTAINER_UID = 1034
"""The image's user, ``bentoml``: BentoML's generated Dockerfile makes it with this uid."""

_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "${__rate_interval}": "5m"}
"""Grafana's variables in the dashboard's queries, and what stands in for them when the
queries are checked as PromQL."""


@dataclass(frozen=True)
class Selector:
    """A metric a query selects, and the labels it matches on."""

    metric: str
    labels: frozenset[str]


def promtool(fetched: Path = ROOT / ".tools/bin/promtool") -> str:
    """The path of ``promtool``: ``fetched``, else one on ``PATH``.

    Without one the test skips, unless ``CI`` is set (to anything): there it fails, since
    the check must run in CI.
    """
    found = str(fetched) if os.access(fetched, os.X_OK) else shutil.which("promtool")
    if found is None:
        message = "promtool is missing: run .ci/fetch-promtool (make test does)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the rules check may not skip")
        pytest.skip(message)
    return found


def dashboard_panels(dashboard: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included."""
    board = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    """Every query of the dashboard, Grafana's variables replaced by PromQL."""
    expressions = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            expressions.append(expression)
    return expressions


def _rules(path: Path = RULES) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_expressions() -> list[str]:
    """Every expression of the rules file: recording rules' and alerts'."""
    return [str(rule["expr"]) for rule in _rules()]


def recorded_names() -> set[str]:
    """The series the recording rules make (Prometheus', not the service's)."""
    return {rule["record"] for rule in _rules() if "record" in rule}


def selectors(expression: str) -> set[Selector]:
    """The metrics ``expression`` selects, each with the labels it matches on."""
    found: set[Selector] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            labels = frozenset(m.name for m in node.matchers.matchers if m.name != "__name__")
            found.add(Selector(node.name, labels))

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found
