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

from models.schema import ModelSchema, build_row, fraud_schema
from models.train import DEFAULT_NOW, train

ROOT = Path(__file__).resolve().parents[1]

ROUND_TRIP = """
import json
from models.dataset import generate_transactions, generate_users
from models.schema import build_matrix
from models.train import DEFAULT_NOW, load, save, train

result = train(n_users=1500, n_transactions=5000, seed=11)
tag = save(result, "fraud_round_trip")
loaded = load(tag)
users = generate_users(100, seed=12, now=DEFAULT_NOW)
tx = generate_transactions(users, 300, seed=13, now=DEFAULT_NOW, missing_fraction=0.3)
inputs = build_matrix(result.schema, tx.stored, tx.amount, tx.timestamp)
print(json.dumps({
    "tag": tag,
    "loaded_tag": loaded.tag,
    "schema": loaded.schema.to_metadata(),
    "metadata": loaded.metadata,
    "threshold": [result.threshold, loaded.threshold],
    "before": result.estimator.predict_proba(inputs)[:, 1].tolist(),
    "after": loaded.estimator.predict_proba(inputs)[:, 1].tolist(),
}))
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
    return train(n_users=3000, n_transactions=10_000, seed=3)


def _defaults() -> dict[str, int | float | None]:
    return {s.name: s.default for s in fraud_schema().inputs if s.source == "stored"}


def test_training_reports_consistent_metrics(result) -> None:
    metrics = result.metrics

    assert metrics.n_train + metrics.n_test == 10_000
    assert metrics.n_test == 2500
    assert 0.01 < metrics.fraud_rate < 0.08
    assert metrics.roc_auc > 0.85
    assert metrics.roc_auc < 0.99
    # Average precision of a useful model is well above the fraud rate (a random model's).
    assert metrics.pr_auc > 3 * metrics.fraud_rate
    assert 0.0 < result.threshold < 1.0
    assert result.schema == fraud_schema()


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
    args = ["-m", "models.train", "--n-users", "1000", "--n-transactions", "4000", "--seed", "5"]

    completed = _run([*args, "--name", "fraud_cli"], tmp_path)

    assert "held-out ROC AUC" in completed.stdout
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
    assert set(metadata["metrics"]) == {"roc_auc", "pr_auc", "n_train", "n_test", "fraud_rate"}
    assert metadata["metrics"]["n_train"] + metadata["metrics"]["n_test"] == 5000
    assert metadata["sklearn_version"]
