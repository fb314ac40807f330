"""An oracle for scores that shares no code with featserve: the model's own ``predict_proba``
on a row built here from values the test chose.

The model is read straight from the BentoML home (its pickled estimator, and the input
order, defaults and threshold its metadata declares); the derived features are worked out
from what each one means (the hour, the day of the week, ...) with ``datetime``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import yaml

__all__ = ["Model", "derived", "expected_score", "fraud_model", "saved_model"]

Model = tuple[Any, dict[str, Any]]
"""The estimator and the metadata of a saved model."""


def fraud_model(bentoml_home: Path) -> Model:
    """The estimator and metadata of the newest ``fraud_model`` in ``bentoml_home``, from disk."""
    return saved_model(bentoml_home, "fraud_model")


def saved_model(bentoml_home: Path, name: str) -> Model:
    """The estimator and metadata of the newest model ``name`` in ``bentoml_home``, from disk."""
    root = bentoml_home / "models" / name
    version = root / (root / "latest").read_text().strip()
    info = yaml.safe_load((version / "model.yaml").read_text())
    return joblib.load(version / "model.pkl"), info["metadata"]


def derived(amount: float, timestamp: int, stored: Mapping[str, Any]) -> dict[str, float]:
    """The derived features from their definitions, not from featserve."""
    when = datetime.fromtimestamp(timestamp, UTC)
    average = float(stored["avg_tx_90d"])
    return {
        "seconds_since_last_login": float(timestamp - int(stored["last_login_ts"])),
        "hour_of_day": float(when.hour),
        "day_of_week": float(when.weekday()),
        "is_weekend": float(when.weekday() >= 5),
        "amount_minus_avg_90d": amount - average,
        "amount_to_avg_90d": amount / max(average, 1.0),
    }


def expected_score(model: Model, stored: Mapping[str, Any], amount: float, timestamp: int) -> float:
    """``predict_proba`` of the row the model's metadata says it was trained on, with
    ``stored`` over the training defaults."""
    estimator, metadata = model
    inputs = metadata["schema"]["inputs"]
    values = {item["name"]: item["default"] for item in inputs if item["source"] == "stored"}
    values.update(stored)
    values |= {"amount": amount, **derived(amount, timestamp, values)}
    row = [[float(values[item["name"]]) for item in inputs]]
    return float(estimator.predict_proba(row)[0, 1])
