"""Training, the saved model's metadata, and the save/load round trip.

Anything that touches the BentoML model store runs in a child process whose
``BENTOML_HOME`` is a temporary directory: BentoML resolves its home once
per process, so only a fresh process is sure to use the one we give it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.schema import InputBuilder, ModelSchema, schema_of
from models.train import DEFAULT_NOW, LoadedModel, check_servable, save_trained, train
from service.harness.example import EXAMPLE
from service.harness.served import EXAMPLE_PROJECT, ROOT

ROUND_TRIP = f"""
import json
from features.project_loader import load_project
from models.schema import InputBuilder
from models.train import DEFAULT_NOW, check_servable, load, save, train

project = load_project({str(EXAMPLE_PROJECT)!r})
result = train(project, project.demo.training_table(1500, 5000, 11, DEFAULT_NOW), seed=11)
tag = save(result, "fraud_round_trip")
loaded = load(tag)
check_servable(loaded, project)
table = project.demo.training_table(100, 300, 12, DEFAULT_NOW)
inputs = InputBuilder(result.schema, project.derived).matrix(table, 300)
print(json.dumps({{
    "tag": tag,
    "loaded_tag": loaded.tag,
    "schema": loaded.schema.to_metadata(),
    "metadata": loaded.metadata,
    "threshold": [result.threshold, loaded.threshold],
    "before": result.estimator.predict_proba(inputs)[:, 1].tolist(),
    "after": loaded.estimator.predict_proba(inputs)[:, 1].tolist(),
}}))
"""


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    completed = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    return completed


@pytest.fixture(scope="module")
def result():
    assert EXAMPLE.demo is not None
    return train(EXAMPLE, EXAMPLE.demo.training_table(3000, 10_000, 3, DEFAULT_NOW), seed=3)


def fraud_schema() -> ModelSchema:
    return schema_of(EXAMPLE)


def build_row(schema: ModelSchema, stored: dict, amount: float, timestamp: int) -> np.ndarray:
    builder = InputBuilder(schema, EXAMPLE.derived)
    return builder.row({**stored, "amount": amount, "timestamp": timestamp})


def _defaults() -> dict[str, int | float | None]:
    return {s.name: s.default for s in fraud_schema().inputs if s.source == "stored"}


def test_training_reports_consistent_metrics(result) -> None:
    metrics = result.metrics

    assert metrics["n_train"] + metrics["n_test"] == 10_000
    assert metrics["n_test"] == 2500
    assert 0.01 < metrics["positive_rate"] < 0.08
    assert metrics["roc_auc"] > 0.85
    assert metrics["roc_auc"] < 0.99
    # Average precision of a useful model is well above the fraud rate (a random model's).
    assert metrics["pr_auc"] > 3 * metrics["positive_rate"]
    assert 0.0 < result.threshold < 1.0
    assert result.schema == fraud_schema()
    assert result.project_digest == EXAMPLE.digest


def test_all_defaults_get_a_sane_score(result) -> None:
    midday = DEFAULT_NOW + 5 * 86400 + 13 * 3600
    row = build_row(result.schema, _defaults(), 45.0, midday)

    score = result.estimator.predict_proba(row)[0, 1]

    assert 0.001 < score < 0.5


def test_a_risky_transaction_scores_above_a_quiet_one(result) -> None:
    night = DEFAULT_NOW + 5 * 86400 + 3 * 3600
    quiet = {
        "tx_count_1h": 0, "tx_sum_1h": 0.0, "tx_count_24h": 3, "tx_sum_24h": 120.0,
        "account_age_days": 1500, "avg_tx_90d": 40.0, "distinct_merchants_7d": 4,
        "credit_score_bucket": 3, "is_premium": 1, "last_login_ts": night - 3600,
    }  # fmt: skip
    risky = {
        **quiet, "tx_count_1h": 6, "tx_sum_1h": 700.0, "tx_count_24h": 8,
        "account_age_days": 2, "distinct_merchants_7d": 14, "credit_score_bucket": 0,
        "is_premium": 0,
    }  # fmt: skip
    rows = np.vstack([build_row(result.schema, s, 400.0, night) for s in (quiet, risky)])

    quiet_score, risky_score = result.estimator.predict_proba(rows)[:, 1]

    assert risky_score > result.threshold > quiet_score


def test_the_cli_trains_and_saves_to_the_model_store(tmp_path: Path) -> None:
    args = ["-m", "models.train", "--project", str(EXAMPLE_PROJECT), "--seed", "5"]
    args += ["--n-entities", "1000", "--n-rows", "4000"]

    completed = _run([*args, "--name", "fraud_cli"], tmp_path)

    assert "roc_auc" in completed.stdout
    assert "saved fraud_cli:" in completed.stdout
    saved = list((tmp_path / "models" / "fraud_cli").glob("*/model.pkl"))
    assert len(saved) == 1


def test_save_then_load_keeps_schema_threshold_and_predictions(tmp_path: Path) -> None:
    out = json.loads(_run(["-c", ROUND_TRIP], tmp_path).stdout)

    assert out["tag"].startswith("fraud_round_trip:")
    assert out["loaded_tag"] == out["tag"]
    assert ModelSchema.from_metadata(out["schema"]) == fraud_schema()
    before, after = out["threshold"]
    assert before == after
    assert out["before"] == out["after"]
    metadata = out["metadata"]
    assert metadata["schema_digest"] == fraud_schema().digest
    assert metadata["threshold"] == before
    assert set(metadata["metrics"]) == {"roc_auc", "pr_auc", "n_train", "n_test", "positive_rate"}
    assert metadata["project"] == "fraud"
    assert metadata["project_digest"] == EXAMPLE.digest
    assert metadata["answer"] == "class_probability"
    assert metadata["metrics"]["n_train"] + metadata["metrics"]["n_test"] == 5000
    assert metadata["sklearn_version"]


def _loaded(result, **changes) -> LoadedModel:
    fields = {
        "tag": "fraud_model:test",
        "estimator": result.estimator,
        "schema": result.schema,
        "threshold": result.threshold,
        "project_digest": result.project_digest,
        "answer_kind": result.answer_kind,
        "metadata": {},
    }
    return LoadedModel(**{**fields, **changes})


class _Regressor:
    n_features_in_ = 17

    def predict(self, inputs):
        return np.zeros(len(inputs))


class _NarrowClassifier:
    n_features_in_ = 5

    def predict_proba(self, inputs):
        return np.zeros((len(inputs), 2))


def test_a_model_that_fits_the_project_is_served(result) -> None:
    check_servable(_loaded(result), EXAMPLE)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"project_digest": "0" * 64}, "trained on project version 000000000000"),
        ({"project_digest": None}, "trained on project version no project digest"),
        ({"answer_kind": "regression"}, "it answers 'regression'"),
        ({"estimator": _Regressor()}, "has no predict_proba()"),
        ({"estimator": _NarrowClassifier()}, "takes 5 inputs, the schema has 17"),
        ({"threshold": None}, "records no threshold"),
    ],
)
def test_a_model_that_does_not_fit_is_refused_naming_the_difference(
    result, changes: dict, named: str
) -> None:
    with pytest.raises(ValueError, match="fraud_model:test does not fit project 'fraud'") as e:
        check_servable(_loaded(result, **changes), EXAMPLE)
    assert named in str(e.value)


def test_a_model_of_other_inputs_is_refused_by_its_schema(result) -> None:
    narrower = ModelSchema("user", ("features",), result.schema.inputs[:-1])
    with pytest.raises(ValueError, match="input 'amount_to_avg_90d' added"):
        check_servable(_loaded(result, schema=narrower), EXAMPLE)


OWN_WAY = f"""
import json
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from features.project_loader import load_project
from models.schema import InputBuilder, schema_of
from models.train import DEFAULT_NOW, check_servable, load, save_trained

project = load_project({str(EXAMPLE_PROJECT)!r})
table = project.demo.training_table(800, 3000, 21, DEFAULT_NOW)
inputs = InputBuilder(schema_of(project), project.derived).matrix(table, 3000)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
model.fit(inputs, table["label"])
tag = save_trained(project, model, threshold=0.3, metrics={{"note": 1.0}})
loaded = load(tag)
check_servable(loaded, project)
print(json.dumps({{"tag": tag, "threshold": loaded.threshold, "metadata": loaded.metadata}}))
"""


def test_a_model_trained_another_way_is_saved_so_the_service_accepts_it(tmp_path: Path) -> None:
    out = json.loads(_run(["-c", OWN_WAY], tmp_path).stdout)
    assert out["tag"].startswith("fraud_model:")
    assert out["threshold"] == 0.3
    assert out["metadata"]["project_digest"] == EXAMPLE.digest
    assert out["metadata"]["estimator"] == "Pipeline"


def test_save_trained_refuses_a_class_probability_without_a_threshold(result) -> None:
    with pytest.raises(ValueError, match="give a threshold"):
        save_trained(EXAMPLE, result.estimator)
