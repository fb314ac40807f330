"""``featserve train PROJECT --data TABLE``: a table of rows becomes a saved, checked model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import yaml

from models.train import DEFAULT_NOW
from service.cli.train import read_training_table
from service.harness.example import EXAMPLE
from service.harness.served import EXAMPLE_PROJECT, ROOT


def training_rows(n_entities: int = 800, n_rows: int = 3000) -> pa.Table:
    assert EXAMPLE.demo is not None
    columns = EXAMPLE.demo.training_table(n_entities, n_rows, 4, DEFAULT_NOW)
    return pa.table({name: pa.array(column) for name, column in columns.items()})


def test_the_command_trains_on_a_csv_and_saves_the_project_digest(tmp_path: Path) -> None:
    table = training_rows()
    # A stored value the table lacks is the training default, as the service would serve it.
    nulls = pa.array([*[None] * 10, *table.column("tx_count_1h").to_pylist()[10:]], pa.int64())
    table = table.set_column(table.column_names.index("tx_count_1h"), "tx_count_1h", nulls)
    path = tmp_path / "rows.csv"
    pa_csv.write_csv(table, path)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "service.cli.main", "train", str(EXAMPLE_PROJECT)]
    done = subprocess.run(
        [*command, "--data", str(path), "--name", "from_csv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "roc_auc" in done.stdout
    assert "saved from_csv:" in done.stdout
    [model_yaml] = (tmp_path / "home" / "models" / "from_csv").glob("*/model.yaml")
    metadata = yaml.safe_load(model_yaml.read_text())["metadata"]
    assert metadata["project_digest"] == EXAMPLE.digest
    assert metadata["metrics"]["n_train"] + metadata["metrics"]["n_test"] == 3000


def test_stored_gaps_become_defaults_and_columns_are_numpy(tmp_path: Path) -> None:
    table = training_rows(50, 200)
    gaps = pa.array([None] * 200, pa.int64())
    table = table.set_column(table.column_names.index("is_premium"), "is_premium", gaps)
    pq.write_table(table, tmp_path / "rows.parquet")
    columns = read_training_table(EXAMPLE, tmp_path / "rows.parquet")
    assert columns["is_premium"].tolist() == [0] * 200
    assert set(columns) >= {"amount", "timestamp", "label", "last_login_ts"}


@pytest.mark.parametrize(
    ("drop", "message"),
    [("amount", r"no column 'amount'"), ("label", r"no column 'label'")],
)
def test_a_table_without_a_needed_column_is_refused_by_name(
    tmp_path: Path, drop: str, message: str
) -> None:
    table = training_rows(50, 200)
    pq.write_table(table.drop_columns([drop]), tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match=message):
        read_training_table(EXAMPLE, tmp_path / "rows.parquet")


def test_a_missing_required_input_is_refused_by_name(tmp_path: Path) -> None:
    table = training_rows(50, 200)
    amounts = pa.array([None, *table.column("amount").to_pylist()[1:]], pa.float64())
    table = table.set_column(table.column_names.index("amount"), "amount", amounts)
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match="column 'amount' has 1 missing values"):
        read_training_table(EXAMPLE, tmp_path / "rows.parquet")
