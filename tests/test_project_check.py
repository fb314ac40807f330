"""``featserve check``: a project's problems, each named by file and line, before serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.project_check import check_project
from service import cli
from service.harness.served import EXAMPLE_PROJECT
from tests.test_project_loader import DERIVED, MINIMAL, write_project


@pytest.fixture(autouse=True)
def forget_loaded_projects() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("featserve_project."):
            del sys.modules[name]


def test_the_example_is_ready(capsys: pytest.CaptureFixture[str]) -> None:
    project, findings = check_project(EXAMPLE_PROJECT)
    assert project is not None and findings == []
    assert cli.main(["check", str(EXAMPLE_PROJECT)]) == 0
    assert "project 'fraud'" in capsys.readouterr().out


def test_imports_beyond_the_documented_api_are_named_by_line(tmp_path: Path) -> None:
    text = "import models.schema\nfrom features.registry import Entity as _E\n" + MINIMAL
    folder = write_project(
        tmp_path / "importer", text, {"models/__init__.py": "from .. import derived\n"}
    )
    _, findings = check_project(folder)
    assert [(Path(f.where).name, f.problem.split(",")[0]) for f in findings] == [
        ("project.py:1", "imports models.schema"),
        ("project.py:2", "imports features.registry"),
    ]


def test_derived_forms_that_disagree_are_named(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "disagree")
    # The column form divides in float32: close, not equal.
    (folder / "derived.py").write_text(
        DERIVED.replace("dtype=np.float64) / spend", "dtype=np.float32) / spend")
    )
    project, findings = check_project(folder)
    assert project is not None
    [finding] = findings
    assert finding.where.endswith("derived.py:4")
    assert "'price_to_spend': one gives" in finding.problem
    assert "batch gives" in finding.problem


def test_a_row_form_that_returns_other_names_is_named(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "names")
    (folder / "derived.py").write_text(DERIVED.replace('{"price_to_spend": row', '{"ratio": row'))
    _, [finding] = check_project(folder)
    assert "one returns ['ratio'], not ['price_to_spend']" in finding.problem


def test_a_project_that_does_not_load_is_one_finding_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = MINIMAL.replace('Feature("spend_7d", "float", 0.0', 'Feature("spend_7d", "float", "x"')
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if '"x"' in text)
    folder = write_project(tmp_path / "broken", bad)
    project, [finding] = check_project(folder)
    assert project is None
    assert finding.where.endswith(f"project.py:{line}")
    assert "RegistryError" in finding.problem
    assert cli.main(["check", str(folder)]) == 1
    assert "problem:" in capsys.readouterr().out
