"""The project the README's "Serve your own model" shows loads, derives and trains as shown."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from features.project import ClassProbability
from features.project_loader import load_project
from models.schema import InputBuilder, schema_of
from models.train import train
from service.harness.served import ROOT


def readme_blocks() -> dict[str, str]:
    """The README's Python blocks that start with ``# my_project/<file>``, by file name."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n# my_project/(\w+\.py)[^\n]*\n(.*?)```", text, re.S)
    return dict(blocks)


@pytest.fixture
def my_project(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "my_project"
    folder.mkdir()
    for name, code in readme_blocks().items():
        (folder / name).write_text(code)
    yield folder
    for name in [n for n in sys.modules if n.startswith("featserve_project.my_project")]:
        del sys.modules[name]


def test_the_readme_shows_both_files() -> None:
    assert set(readme_blocks()) == {"project.py", "derived.py"}


def test_the_readme_project_loads_derives_and_trains(my_project: Path) -> None:
    project = load_project(my_project)
    assert project.name == "cards"
    assert isinstance(project.model.answer, ClassProbability)
    schema = schema_of(project)
    assert schema.names == ("spend_7d", "declines_24h", "price", "price_to_spend")
    rng = np.random.default_rng(3)
    n = 400
    table = {
        "spend_7d": rng.uniform(0, 500, n),
        "declines_24h": rng.integers(0, 5, n),
        "price": rng.uniform(0, 300, n),
    }
    table["label"] = (table["price"] / np.maximum(table["spend_7d"], 1.0) > 1.0).astype(int)
    builder = InputBuilder(schema, project.derived)
    matrix = builder.matrix(table, n)
    for i in range(0, n, 37):
        row = builder.row({name: column[i].item() for name, column in table.items()})
        assert row.tobytes() == matrix[i : i + 1].tobytes()
    result = train(project, table, seed=1)
    assert result.metrics["roc_auc"] > 0.9
    assert result.threshold is not None
