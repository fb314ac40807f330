"""The model schema: its columns, its digest, its differences, and the input builder's row
and column forms (on the example project)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from models.schema import InputBuilder, InputSpec, ModelSchema, require_same_schema, schema_of
from service.harness.example import EXAMPLE, example_module
from service.harness.served import ROOT

NOW = 1_767_225_600
DERIVED_FEATURES = example_module("derived").DERIVED_FEATURES
generate_transactions = example_module("dataset").generate_transactions
generate_users = example_module("dataset").generate_users


def fraud_schema() -> ModelSchema:
    return schema_of(EXAMPLE)


def build_row(schema: ModelSchema, stored: dict, amount: float, timestamp: int) -> np.ndarray:
    builder = InputBuilder(schema, EXAMPLE.derived)
    return builder.row({**stored, "amount": amount, "timestamp": timestamp})


def build_matrix(schema: ModelSchema, stored, amount, timestamp) -> np.ndarray:
    columns = {**stored, "amount": amount, "timestamp": timestamp}
    return InputBuilder(schema, EXAMPLE.derived).matrix(columns, len(amount))


# The fraud example's feature table, as specified (not read from the registry): name, dtype,
# default.
SPECIFIED_FEATURES = [
    ("tx_count_1h", "int", 0),
    ("tx_sum_1h", "float", 0.0),
    ("tx_count_24h", "int", 0),
    ("tx_sum_24h", "float", 0.0),
    ("account_age_days", "int", 0),
    ("avg_tx_90d", "float", 0.0),
    ("distinct_merchants_7d", "int", 0),
    ("credit_score_bucket", "int", 2),
    ("is_premium", "int", 0),
    ("last_login_ts", "int", 0),
]


def _with_input(schema: ModelSchema, index: int, **changes: Any) -> ModelSchema:
    inputs = list(schema.inputs)
    inputs[index] = dataclasses.replace(inputs[index], **changes)
    return dataclasses.replace(schema, inputs=tuple(inputs))


def _stored_defaults(schema: ModelSchema) -> dict[str, int | float | None]:
    return {spec.name: spec.default for spec in schema.inputs if spec.source == "stored"}


def test_fraud_schema_is_stored_features_then_amount_then_derived() -> None:
    schema = fraud_schema()

    assert schema.entity_type == "user"
    assert schema.groups == ("features",)
    stored = [(s.name, s.dtype, s.default) for s in schema.inputs if s.source == "stored"]
    assert stored == SPECIFIED_FEATURES
    assert schema.names == (
        *(name for name, _, _ in SPECIFIED_FEATURES),
        "amount",
        *DERIVED_FEATURES,
    )
    assert [s.source for s in schema.inputs[10:]] == ["request"] + ["derived"] * 6
    assert all(s.dtype == "float" and s.default is None for s in schema.inputs[10:])


def test_float_defaults_stay_floats() -> None:
    spec = InputSpec("tx_sum_1h", "stored", "float", 0)

    assert spec.default == 0.0
    assert isinstance(spec.default, float)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("x", "cached", "int", 0), "unknown source"),
        (("x", "stored", "str", 0), "unknown dtype"),
        (("x", "stored", "int", None), "not an int"),
        (("x", "stored", "int", 1.5), "not an int"),
        (("x", "stored", "int", True), "not an int"),
        (("x", "stored", "float", float("nan")), "not a finite float"),
        (("amount", "request", "float", 0.0), "only stored inputs have a default"),
    ],
)
def test_input_spec_rejects_what_cannot_be_right(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputSpec(*arguments)


def test_schema_rejects_duplicate_inputs() -> None:
    stored = InputSpec("avg_tx_90d", "stored", "float", 0.0)
    with pytest.raises(ValueError, match="duplicate"):
        ModelSchema("user", ("features",), (stored, stored))


def test_metadata_round_trips_through_json() -> None:
    schema = fraud_schema()

    restored = ModelSchema.from_metadata(json.loads(json.dumps(schema.to_metadata())))

    assert restored == schema
    assert restored.digest == schema.digest
    assert isinstance(restored.inputs[1].default, float)


def test_metadata_has_no_none_values() -> None:
    # BentoML refuses None anywhere in a model's metadata.
    assert "null" not in json.dumps(fraud_schema().to_metadata())


@pytest.mark.parametrize(
    "data", [{}, {"entity_type": "user", "groups": ["features"]}, {"inputs": 3}]
)
def test_from_metadata_rejects_what_is_not_a_schema(data: dict) -> None:
    with pytest.raises(ValueError):
        ModelSchema.from_metadata(data)


def test_digest_is_a_sha256_hex_that_other_processes_agree_on() -> None:
    digest = fraud_schema().digest
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    # A model trained in one process is checked in another: the digest must not depend on
    # string hashing (set or dict order), which PYTHONHASHSEED changes between processes.
    probe = (
        "from features.project_loader import load_project; from models.schema import schema_of; "
        "project = load_project('examples/fraud'); print(schema_of(project).digest, project.digest)"
    )
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split()
        assert other == [digest, EXAMPLE.digest]


def test_equal_schemas_have_no_differences() -> None:
    assert fraud_schema().differences(fraud_schema()) == []


def test_amount_moved_to_the_front_is_a_reorder() -> None:
    schema = fraud_schema()
    inputs = (schema.inputs[10], *schema.inputs[:10], *schema.inputs[11:])
    moved = dataclasses.replace(schema, inputs=inputs)

    assert moved.digest != schema.digest
    (line,) = schema.differences(moved)
    assert line.startswith("inputs reordered: ['tx_count_1h',")
    assert "-> ['amount', 'tx_count_1h'," in line


CHANGES = [
    pytest.param(
        lambda s: _with_input(s, 0, dtype="float", default=0.0),
        [
            "input 'tx_count_1h' dtype changed: 'int' -> 'float'",
            "input 'tx_count_1h' default changed: 0 -> 0.0",
        ],
        id="dtype",
    ),
    pytest.param(
        lambda s: _with_input(s, 7, default=3),
        ["input 'credit_score_bucket' default changed: 2 -> 3"],
        id="default",
    ),
    pytest.param(
        lambda s: dataclasses.replace(s, inputs=s.inputs[:-1]),
        ["input 'amount_to_avg_90d' removed (derived float)"],
        id="removed",
    ),
    pytest.param(
        lambda s: dataclasses.replace(
            s, inputs=(*s.inputs, InputSpec("risk", "stored", "float", 0.5))
        ),
        ["input 'risk' added (stored float, default 0.5)"],
        id="added",
    ),
    pytest.param(
        lambda s: dataclasses.replace(s, groups=("features", "embedding")),
        ["feature groups changed: ['features'] -> ['features', 'embedding']"],
        id="groups",
    ),
    pytest.param(
        lambda s: dataclasses.replace(s, entity_type="card"),
        ["entity type changed: 'user' -> 'card'"],
        id="entity",
    ),
]


@pytest.mark.parametrize(("change", "expected"), CHANGES)
def test_a_change_alters_the_digest_and_is_named(change, expected: list[str]) -> None:
    schema = fraud_schema()
    changed = change(schema)

    assert changed.digest != schema.digest
    assert schema.differences(changed) == expected


def test_build_row_computes_each_input_independently() -> None:
    # Saturday 2026-01-03 14:30 UTC, last login two hours before.
    when = datetime(2026, 1, 3, 14, 30, tzinfo=UTC)
    timestamp = int(when.timestamp())
    stored = {
        "tx_count_1h": 2,
        "tx_sum_1h": 80.5,
        "tx_count_24h": 5,
        "tx_sum_24h": 210.25,
        "account_age_days": 400,
        "avg_tx_90d": 50.0,
        "distinct_merchants_7d": 7,
        "credit_score_bucket": 3,
        "is_premium": 1,
        "last_login_ts": timestamp - 7200,
        "not_an_input": 99,
    }

    row = build_row(fraud_schema(), stored, 125.0, timestamp)

    assert row.shape == (1, 17)
    assert row.dtype == np.float64
    expected_stored = [2, 80.5, 5, 210.25, 400, 50.0, 7, 3, 1, timestamp - 7200]
    derived = [7200, 14, when.weekday(), 1, 125.0 - 50.0, 125.0 / 50.0]
    assert row[0].tolist() == [*expected_stored, 125.0, *derived]
    assert when.weekday() == 5


def test_build_row_on_defaults_divides_by_one() -> None:
    schema = fraud_schema()

    row = build_row(schema, _stored_defaults(schema), 30.0, NOW)

    values = dict(zip(schema.names, row[0].tolist(), strict=True))
    assert values["seconds_since_last_login"] == NOW
    assert values["amount_to_avg_90d"] == 30.0
    assert values["credit_score_bucket"] == 2


def test_build_row_and_build_matrix_agree_exactly() -> None:
    schema = fraud_schema()
    users = generate_users(300, seed=7, now=NOW)
    transactions = generate_transactions(users, 2000, seed=8, now=NOW, missing_fraction=0.2)
    rng = np.random.default_rng(9)
    # Amounts of every scale, some below the 1.0 ratio floor, some with many decimals.
    amount = np.concatenate([transactions.amount[:1000], rng.uniform(0, 5000, 1000)])
    amount[:5] = [0.0, 0.3, 1.0, 0.1 + 0.2, 1e-9]
    stored = transactions.stored

    matrix = build_matrix(schema, stored, amount, transactions.timestamp)

    assert matrix.shape == (2000, 17)
    assert matrix.dtype == np.float64
    assert transactions.missing.sum() > 100
    for i in range(len(transactions)):
        record = {name: column[i].item() for name, column in stored.items()}
        row = build_row(schema, record, amount[i].item(), transactions.timestamp[i].item())
        assert row.tobytes() == matrix[i : i + 1].tobytes(), f"row {i} differs"


def test_build_matrix_rejects_columns_of_different_lengths() -> None:
    schema = fraud_schema()
    stored = {name: np.zeros(3) for name in _stored_defaults(schema)}

    with pytest.raises(ValueError, match=r"'timestamp' has shape \(2,\), \(3,\) expected"):
        build_matrix(schema, stored, np.ones(3), np.full(2, NOW))
    stored["tx_count_1h"] = np.zeros(4)
    with pytest.raises(ValueError, match="'tx_count_1h' has shape"):
        build_matrix(schema, stored, np.ones(3), np.full(3, NOW))


def test_a_model_trained_on_other_inputs_is_refused_with_what_differs() -> None:
    current = fraud_schema()
    trained = ModelSchema(
        entity_type=current.entity_type,
        groups=current.groups,
        inputs=tuple(spec for spec in current.inputs if spec.name != "is_premium"),
    )
    with pytest.raises(ValueError, match="fraud_model:abc") as refused:
        require_same_schema(trained, current, "fraud_model:abc")
    assert "input 'is_premium' added" in str(refused.value)
    require_same_schema(current, fraud_schema(), "fraud_model:abc")
