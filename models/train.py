"""Train a project's model and save it to the BentoML model store; load it back, checked.

    python -m models.train --project DIR [--n-entities N] [--n-rows M] [--seed S] [--name NAME]

``train`` builds the inputs of a labelled table with ``models.schema``'s
``InputBuilder`` (the same code, and the project's own derived features, the
service scores with), splits it into a training and a held-out set (seeded;
stratified for a classifier), fits the estimator the project names and
measures it on the held-out rows.  The command line trains on the project's
demo rows (``Project.demo.training_table``).

A classifier's threshold is the project's, or else the score that maximises
F1 on the held-out set; a row is flagged when its score is at least the
threshold.

``save`` stores the estimator with the schema of its inputs, the project's
name and digest, the answer's kind, the threshold and the held-out metrics
(``save_trained`` does the same for an estimator fitted some other way);
``check_servable`` refuses, naming each difference, a model whose schema,
project digest or interface does not match the loaded project.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bentoml
import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.metrics import (
    average_precision_score,
    mean_absolute_error,
    precision_recall_curve,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split

from features.project import ClassProbability, Project, TrainingTable
from features.project_loader import load_project
from models.schema import InputBuilder, ModelSchema, require_same_schema, schema_of

__all__ = [
    "DEFAULT_NOW",
    "MODEL_FILE",
    "LoadedModel",
    "TrainResult",
    "check_servable",
    "default_model_name",
    "load",
    "main",
    "save",
    "save_trained",
    "train",
]

DEFAULT_NOW = 1_767_225_600
"""The clock demo rows are drawn at (2026-01-01T00:00:00Z); fixed, so training repeats."""

MODEL_FILE = "model.pkl"
"""The joblib file holding the estimator, inside the BentoML model directory."""


@dataclass(frozen=True)
class TrainResult:
    """A fitted estimator with the schema of its inputs, its threshold and its metrics."""

    estimator: Any
    schema: ModelSchema
    project_name: str
    project_digest: str
    answer_kind: str
    threshold: float | None
    """A classifier's threshold; ``None`` for a regression."""
    metrics: Mapping[str, float]
    """Held-out measures (``roc_auc``, ``pr_auc``, ``positive_rate`` for a classifier;
    ``r2``, ``mae`` for a regression) and ``n_train``, ``n_test``."""


@dataclass(frozen=True)
class LoadedModel:
    """A model read back from the BentoML model store."""

    tag: str
    estimator: Any
    schema: ModelSchema
    threshold: float | None
    project_digest: str | None
    answer_kind: str | None
    metadata: Mapping[str, Any]


def default_model_name(project: Project) -> str:
    """The model store name a project's model is saved under: ``<project name>_model``."""
    return f"{project.name}_model"


def train(
    project: Project, table: TrainingTable, seed: int = 0, test_size: float = 0.25
) -> TrainResult:
    """Fit ``project``'s estimator on ``table`` (stored features, request inputs, label)."""
    if project.model.estimator is None:
        raise ValueError(f"project {project.name!r} names no estimator (ModelSpec.estimator)")
    schema = schema_of(project)
    label_name = project.model.label_column
    if label_name not in table:
        raise ValueError(f"the training table has no label column {label_name!r}")
    labels = np.asarray(table[label_name])
    inputs = InputBuilder(schema, project.derived).matrix(table, len(labels))
    answer = project.model.answer
    classify = isinstance(answer, ClassProbability)
    x_train, x_test, y_train, y_test = train_test_split(
        inputs,
        labels,
        test_size=test_size,
        stratify=labels if classify else None,
        random_state=seed,
    )
    estimator = project.model.estimator(seed)
    estimator.fit(x_train, y_train)
    sizes = {"n_train": float(len(y_train)), "n_test": float(len(y_test))}
    if isinstance(answer, ClassProbability):
        scores = estimator.predict_proba(x_test)[:, answer.positive]
        positive = y_test == estimator.classes_[answer.positive]
        metrics = {
            "roc_auc": float(roc_auc_score(positive, scores)),
            "pr_auc": float(average_precision_score(positive, scores)),
            "positive_rate": float(np.mean(labels == estimator.classes_[answer.positive])),
            **sizes,
        }
        threshold = (
            answer.threshold
            if answer.threshold is not None
            else _max_f1_threshold(positive, scores)
        )
    else:
        predicted = estimator.predict(x_test)
        metrics = {
            "r2": float(r2_score(y_test, predicted)),
            "mae": float(mean_absolute_error(y_test, predicted)),
            **sizes,
        }
        threshold = None
    return TrainResult(
        estimator, schema, project.name, project.digest, answer.kind, threshold, metrics
    )


def _max_f1_threshold(labels: npt.ArrayLike, scores: npt.NDArray[np.float64]) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last precision/recall pair has no threshold (recall 0 by convention).
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(thresholds[int(np.argmax(f1))])


def save(result: TrainResult, name: str) -> str:
    """Save ``result`` to the BentoML model store as ``name``; return the new tag."""
    metadata: dict[str, Any] = {
        "schema": result.schema.to_metadata(),
        "schema_digest": result.schema.digest,
        "project": result.project_name,
        "project_digest": result.project_digest,
        "answer": result.answer_kind,
        "metrics": dict(result.metrics),
        "estimator": type(result.estimator).__name__,
        "sklearn_version": sklearn.__version__,
    }
    if result.threshold is not None:  # BentoML refuses None anywhere in metadata.
        metadata["threshold"] = result.threshold
    labels = {"project": result.project_name, "framework": "scikit-learn"}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        joblib.dump(result.estimator, model.path_of(MODEL_FILE))
    return str(model.tag)


def save_trained(
    project: Project,
    estimator: Any,
    threshold: float | None = None,
    metrics: Mapping[str, float] | None = None,
    name: str | None = None,
) -> str:
    """Save an estimator ``project``'s model was fitted some other way (on rows built by
    ``InputBuilder(schema_of(project), project.derived)``, columns in the project's input
    order), with what the service checks: the schema, the project digest and the answer.

    A class probability needs its ``threshold`` (or the project's own); a regression takes
    none.  Returns the new tag (``name``, default ``<project name>_model``).
    """
    answer = project.model.answer
    if isinstance(answer, ClassProbability):
        threshold = answer.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError(
                f"project {project.name!r} answers a class probability: give a threshold"
            )
    elif threshold is not None:
        raise ValueError(f"project {project.name!r} answers a regression value: no threshold")
    result = TrainResult(
        estimator,
        schema_of(project),
        project.name,
        project.digest,
        answer.kind,
        threshold,
        dict(metrics or {}),
    )
    return save(result, name or default_model_name(project))


def load(tag: str | bentoml.Tag) -> LoadedModel:
    """Read a model ``save`` wrote; ``ValueError`` if its schema metadata is missing or altered.

    A project-defined class inside the estimator unpickles only once its project is loaded.
    """
    model = bentoml.models.get(tag)
    metadata: dict[str, Any] = dict(model.info.metadata)
    try:
        schema = ModelSchema.from_metadata(metadata["schema"])
        digest = metadata["schema_digest"]
        threshold = None if "threshold" not in metadata else float(metadata["threshold"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"model {model.tag} lacks the metadata save() writes: {exc!r}") from None
    if schema.digest != digest:
        raise ValueError(
            f"model {model.tag}: schema digest {schema.digest} does not match the saved {digest}"
        )
    estimator = joblib.load(model.path_of(MODEL_FILE))
    return LoadedModel(
        str(model.tag),
        estimator,
        schema,
        threshold,
        metadata.get("project_digest"),
        metadata.get("answer"),
        metadata,
    )


def check_servable(model: LoadedModel, project: Project) -> None:
    """Raise ``ValueError`` naming each way ``model`` does not fit ``project``: its input
    schema, the project digest it was trained on, its answer, its estimator's interface."""
    require_same_schema(model.schema, schema_of(project), model.tag)
    problems = []
    if model.project_digest != project.digest:
        trained = "no project digest" if model.project_digest is None else model.project_digest[:12]
        problems.append(
            f"it was trained on project version {trained}, the loaded project "
            f"{project.name!r} is {project.digest[:12]} (its declarations or derived-feature "
            "code changed)"
        )
    answer = project.model.answer
    if model.answer_kind != answer.kind:
        problems.append(f"it answers {model.answer_kind!r}, the project declares {answer.kind!r}")
    method = "predict_proba" if isinstance(answer, ClassProbability) else "predict"
    if not callable(getattr(model.estimator, method, None)):
        problems.append(f"its estimator {type(model.estimator).__name__} has no {method}()")
    n_in = getattr(model.estimator, "n_features_in_", len(model.schema.inputs))
    if n_in != len(model.schema.inputs):
        problems.append(
            f"its estimator takes {n_in} inputs, the schema has {len(model.schema.inputs)}"
        )
    if isinstance(answer, ClassProbability) and model.threshold is None:
        problems.append("it records no threshold for its class probability")
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(
            f"model {model.tag} does not fit project {project.name!r}:\n{lines}\n"
            "Retrain it (`featserve train PROJECT`, or `make train` for the example)."
        )


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: train on the project's demo rows, print the metrics, save."""
    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train a project's model on its demo rows and save it.",
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("FEATSERVE_PROJECT"),
        help="the project folder (default: FEATSERVE_PROJECT)",
    )
    parser.add_argument("--n-entities", "--n-users", type=int, default=10_000)
    parser.add_argument("--n-rows", "--n-transactions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="model name in the BentoML store (default: <project>_model)")
    args = parser.parse_args(argv)
    if not args.project:
        parser.error("no project: pass --project DIR or set FEATSERVE_PROJECT")
    project = load_project(args.project)
    if project.demo is None:
        parser.error(f"project {project.name!r} brings no demo rows (Project.demo)")

    started = time.perf_counter()
    table = project.demo.training_table(args.n_entities, args.n_rows, args.seed, DEFAULT_NOW)
    result = train(project, table, args.seed)
    elapsed = time.perf_counter() - started
    metrics = result.metrics
    print(
        f"trained on {metrics['n_train']:.0f} rows in {elapsed:.1f} s, "
        f"held out {metrics['n_test']:.0f}"
    )
    print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("n_")))
    if result.threshold is not None:
        print(f"threshold {result.threshold:.4f}")
    print(f"saved {save(result, args.name or default_model_name(project))}")


if __name__ == "__main__":
    main()
