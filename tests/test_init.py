"""``featserve init``: a minimal project that checks out and trains."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from features.project_check import check_project
from models.train import train
from service import cli


@pytest.fixture(autouse=True)
def forget_loaded_projects() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("featserve_project."):
            del sys.modules[name]


def test_init_writes_a_project_that_checks_and_trains(tmp_path: Path) -> None:
    folder = tmp_path / "my-shop"
    assert cli.main(["init", str(folder)]) == 0
    project, findings = check_project(folder)
    assert findings == []
    assert project is not None and project.name == "my_shop"
    rng = np.random.default_rng(2)
    n = 300
    table = {
        "spend_7d": rng.uniform(0, 100, n),
        "events_24h": rng.integers(0, 10, n),
        "amount": rng.uniform(0, 100, n),
    }
    table["label"] = (table["amount"] > table["spend_7d"]).astype(int)
    assert train(project, table, seed=0).metrics["roc_auc"] > 0.9


def test_init_never_overwrites_a_project(tmp_path: Path) -> None:
    (tmp_path / "project.py").write_text("# mine\n")
    assert cli.main(["init", str(tmp_path)]) == 2
    assert (tmp_path / "project.py").read_text() == "# mine\n"
