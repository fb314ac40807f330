"""Train the fraud model on synthetic data and save it to the BentoML model store.

    python -m models.train [--n-users N] [--n-transactions M] [--seed S] [--name fraud_model]

The inputs are built with ``models.schema.build_matrix``, the same code (and
the same ``features.derive``) the service scores with.  The transactions are
split into a training and a held-out set (stratified, seeded); the held-out
ROC AUC and PR AUC are reported and saved with the model.

Estimator: ``GradientBoostingClassifier`` with 100 trees of depth 3.  Trees
need no scaling and isolate the training defaults (``last_login_ts = 0``
makes ``seconds_since_last_login`` an epoch-sized value no real user has)
without letting them distort the other rows, which a linear model cannot.
Its single-row ``predict_proba`` runs single-threaded, mostly sklearn's
input validation (the service compiles the trees to skip it:
``models.compiled_trees``).  ``HistGradientBoostingClassifier`` scores as
well but predicts through an OpenMP pool, whose threads compete with the
other processes of a small shared host and stretch the single-row tail.

Threshold: the score that maximises F1 on the held-out set; a transaction is
flagged when its fraud probability is at least the threshold.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import bentoml
import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.model_selection import train_test_split

from models.dataset import generate_transactions, generate_users
from models.schema import ModelSchema, build_matrix, fraud_schema

__all__ = [
    "DEFAULT_NOW",
    "MODEL_FILE",
    "LoadedModel",
    "Metrics",
    "TrainResult",
    "load",
    "main",
    "save",
    "train",
]

DEFAULT_NOW = 1_767_225_600
"""The clock the synthetic data is drawn at (2026-01-01T00:00:00Z); fixed, so training repeats."""

MODEL_FILE = "model.pkl"
"""The joblib file holding the estimator, inside the BentoML model directory."""


@dataclass(frozen=True)
class Metrics:
    """How the model did on the held-out set, and what it was trained on."""

    roc_auc: float
    pr_auc: float
    """Average precision: the area under the precision-recall curve."""
    n_train: int
    n_test: int
    fraud_rate: float
    """The share of fraud over all transactions, training and held-out."""


@dataclass(frozen=True)
class TrainResult:
    """A trained estimator with the schema of its inputs and its decision threshold."""

    estimator: GradientBoostingClassifier
    schema: ModelSchema
    threshold: float
    metrics: Metrics


@dataclass(frozen=True)
class LoadedModel:
    """A model read back from the BentoML model store."""

    tag: str
    estimator: GradientBoostingClassifier
    schema: ModelSchema
    threshold: float
    metadata: Mapping[str, Any]


def train(
    n_users: int = 10_000,
    n_transactions: int = 20_000,
    seed: int = 0,
    now: int = DEFAULT_NOW,
    test_size: float = 0.25,
) -> TrainResult:
    """Draw the synthetic dataset, fit the estimator, measure it on the held-out set."""
    schema = fraud_schema()
    users = generate_users(n_users, seed, now)
    transactions = generate_transactions(users, n_transactions, seed + 1, now)
    inputs = build_matrix(schema, transactions.stored, transactions.amount, transactions.timestamp)
    x_train, x_test, y_train, y_test = train_test_split(
        inputs,
        transactions.label,
        test_size=test_size,
        stratify=transactions.label,
        random_state=seed,
    )
    estimator = GradientBoostingClassifier(
        n_estimators=100, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
    )
    estimator.fit(x_train, y_train)
    scores = estimator.predict_proba(x_test)[:, 1]
    metrics = Metrics(
        roc_auc=float(roc_auc_score(y_test, scores)),
        pr_auc=float(average_precision_score(y_test, scores)),
        n_train=len(y_train),
        n_test=len(y_test),
        fraud_rate=transactions.fraud_rate,
    )
    return TrainResult(estimator, schema, _max_f1_threshold(y_test, scores), metrics)


def _max_f1_threshold(labels: npt.ArrayLike, scores: npt.NDArray[np.float64]) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last precision/recall pair has no threshold (recall 0 by convention).
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(thresholds[int(np.argmax(f1))])


def save(result: TrainResult, name: str = "fraud_model") -> str:
    """Save ``result`` to the BentoML model store as ``name``; return the new tag."""
    metadata = {
        "schema": result.schema.to_metadata(),
        "schema_digest": result.schema.digest,
        "threshold": result.threshold,
        "metrics": asdict(result.metrics),
        "estimator": type(result.estimator).__name__,
        "sklearn_version": sklearn.__version__,
    }
    labels = {"task": "fraud-detection", "framework": "scikit-learn"}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        joblib.dump(result.estimator, model.path_of(MODEL_FILE))
    return str(model.tag)


def load(tag: str | bentoml.Tag) -> LoadedModel:
    """Read a model ``save`` wrote; ``ValueError`` if its schema metadata is missing or altered."""
    model = bentoml.models.get(tag)
    metadata: dict[str, Any] = dict(model.info.metadata)
    try:
        schema = ModelSchema.from_metadata(metadata["schema"])
        digest = metadata["schema_digest"]
        threshold = float(metadata["threshold"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"model {model.tag} lacks the metadata save() writes: {exc!r}") from None
    if schema.digest != digest:
        raise ValueError(
            f"model {model.tag}: schema digest {schema.digest} does not match the saved {digest}"
        )
    estimator = joblib.load(model.path_of(MODEL_FILE))
    return LoadedModel(str(model.tag), estimator, schema, threshold, metadata)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: train, print the held-out metrics, save."""
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description="Train the fraud model and save it."
    )
    parser.add_argument("--n-users", type=int, default=10_000)
    parser.add_argument("--n-transactions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="fraud_model", help="model name in the BentoML store")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    result = train(args.n_users, args.n_transactions, args.seed)
    elapsed = time.perf_counter() - started
    metrics = result.metrics
    print(
        f"trained on {metrics.n_train} transactions in {elapsed:.1f} s, "
        f"held out {metrics.n_test} (fraud rate {metrics.fraud_rate:.2%})"
    )
    print(f"held-out ROC AUC {metrics.roc_auc:.4f}, PR AUC {metrics.pr_auc:.4f}")
    print(f"threshold {result.threshold:.4f} (maximises held-out F1)")
    print(f"saved {save(result, args.name)}")


if __name__ == "__main__":
    main()
