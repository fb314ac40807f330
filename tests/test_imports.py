"""Importing the definitions stays cheap: no store client, no table library."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
