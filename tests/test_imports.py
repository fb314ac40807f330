"""Importing stays cheap: the definitions load no store client and no table library,
``featserve materialize`` no model library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.harness.served import EXAMPLE_PROJECT

HEAVY = ("redis", "hiredis", "pyarrow", "boto3")


@pytest.mark.parametrize(
    "modules",
    [
        "features.registry",
        "features.project",
        "features.project_check",
        "features.project_loader",
        "features.settings",
        "features.sources",
        "models.schema",
        "models.train",
    ],
)
def test_definitions_load_no_store_client(modules: str) -> None:
    # pandas, which the dev environment has for Spark and the Bento does not, is hidden as
    # in the Bento: scikit-learn imports it when it can, and pandas imports pyarrow.
    probe = (
        f"import sys; sys.modules['pandas'] = None; import {modules}; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


MODEL_LIBRARIES = ("bentoml", "sklearn", "scipy")


def test_materialize_command_loads_no_model_library(tmp_path: Path) -> None:
    # The command runs to its end (a table that is not there: exit 2) in a child, which then
    # says which model libraries it had imported; loading the project loads none either.
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print(','.join(m for m in {MODEL_LIBRARIES!r} "
        "if m in sys.modules)))\n"
        "from service.cli.main import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "materialize", str(tmp_path / "absent.parquet")],
        capture_output=True,
        text=True,
        env={**os.environ, "FEATSERVE_PROJECT": str(EXAMPLE_PROJECT), "COLUMNS": "1000"},
    )
    assert done.returncode == 2, done.stderr
    assert "no such file" in done.stderr
    assert done.stdout.strip() == ""
