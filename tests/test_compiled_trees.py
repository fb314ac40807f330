"""The compiled trees give exactly scikit-learn's probabilities, and refuse what they cannot."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError

from models.compiled_trees import MAX_DEPTH, CompiledGradientBoosting
from models.schema import InputBuilder, schema_of
from models.train import DEFAULT_NOW, train
from service.harness.example import EXAMPLE, example_module

_dataset = example_module("dataset")
TransactionSet = Any
generate_transactions = _dataset.generate_transactions
generate_users = _dataset.generate_users

N_USERS, N_TRANSACTIONS, SEED = 1500, 4000, 21

Matrix = npt.NDArray[np.float64]


@pytest.fixture(scope="module")
def transactions() -> TransactionSet:
    """Every transaction ``train`` draws for these arguments (users from ``SEED``,
    transactions from ``SEED + 1``), training and held-out."""
    users = generate_users(N_USERS, SEED, DEFAULT_NOW)
    return generate_transactions(users, N_TRANSACTIONS, SEED + 1, DEFAULT_NOW)


@pytest.fixture(scope="module")
def inputs(transactions: TransactionSet) -> Matrix:
    columns = {
        **transactions.stored,
        "amount": transactions.amount,
        "timestamp": transactions.timestamp,
    }
    return InputBuilder(schema_of(EXAMPLE), EXAMPLE.derived).matrix(columns, len(transactions))


@pytest.fixture(scope="module")
def labels(transactions: TransactionSet) -> npt.NDArray[np.int8]:
    return transactions.label


@pytest.fixture(scope="module")
def estimator() -> GradientBoostingClassifier:
    """The production recipe (100 trees of depth 3), on a smaller dataset."""
    table = _dataset.training_table(N_USERS, N_TRANSACTIONS, SEED, DEFAULT_NOW)
    return train(EXAMPLE, table, seed=SEED).estimator


def _fit(inputs: Matrix, labels: npt.ArrayLike, **params: Any) -> GradientBoostingClassifier:
    model = GradientBoostingClassifier(n_estimators=20, random_state=0, **params)
    return model.fit(inputs[:1000], np.asarray(labels)[:1000])


def _split_points(model: GradientBoostingClassifier) -> list[tuple[int, float]]:
    """Every (feature, threshold) the model's trees split on."""
    points: list[tuple[int, float]] = []
    for regressor in model.estimators_[:, 0]:
        tree = regressor.tree_
        internal = tree.children_left != -1
        points += zip(
            tree.feature[internal].tolist(), tree.threshold[internal].tolist(), strict=True
        )
    return points


def _around(threshold: float) -> list[float]:
    """The threshold, its float64 neighbours, and the float32 values nearest it."""
    below, above = np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)
    nearest = np.float32(threshold)
    float32s = [
        np.nextafter(nearest, np.float32(-np.inf)),
        nearest,
        np.nextafter(nearest, np.float32(np.inf)),
    ]
    return [threshold, float(below), float(above), *(float(value) for value in float32s)]


def _rows_on_thresholds(model: GradientBoostingClassifier, base: Matrix, seed: int) -> Matrix:
    """``base`` rows with every column moved onto or next to one of its split points."""
    rng = np.random.default_rng(seed)
    rows = base.copy()
    by_feature: dict[int, list[float]] = {}
    for feature, threshold in _split_points(model):
        by_feature.setdefault(feature, []).extend(_around(threshold))
    for feature, values in by_feature.items():
        rows[:, feature] = rng.choice(values, size=len(rows))
    return rows


def test_equals_predict_proba_on_the_training_transactions(estimator, inputs) -> None:
    compiled = CompiledGradientBoosting(estimator)

    assert np.array_equal(compiled.predict_proba(inputs), estimator.predict_proba(inputs))


def test_equals_predict_proba_one_row_at_a_time(estimator, inputs) -> None:
    compiled = CompiledGradientBoosting(estimator)

    for row in inputs[::80]:
        one = row.reshape(1, -1)
        got = compiled.predict_proba(one)
        assert got.shape == (1, 2)
        assert np.array_equal(got, estimator.predict_proba(one))


def test_equals_predict_proba_on_and_around_every_threshold(estimator, inputs) -> None:
    compiled = CompiledGradientBoosting(estimator)
    rows = _rows_on_thresholds(estimator, inputs[:2000], seed=5)
    # Some of these values fall on opposite sides of a threshold in float64 and float32.
    points = _split_points(estimator)
    straddling = [
        value
        for _, threshold in points
        for value in _around(threshold)
        if (value <= threshold) != (np.float32(value) <= threshold)
    ]
    assert straddling

    assert np.array_equal(compiled.predict_proba(rows), estimator.predict_proba(rows))
    for row in rows[:25]:
        one = row.reshape(1, -1)
        assert np.array_equal(compiled.predict_proba(one), estimator.predict_proba(one))


def test_equals_predict_proba_on_random_rows(estimator, inputs) -> None:
    compiled = CompiledGradientBoosting(estimator)
    rng = np.random.default_rng(9)
    # Each column drawn uniformly across its observed range, and a little beyond.
    low, high = inputs.min(axis=0), inputs.max(axis=0)
    span = high - low
    rows = rng.uniform(low - 0.1 * span, high + 0.1 * span, size=(500, inputs.shape[1]))

    assert np.array_equal(compiled.predict_proba(rows), estimator.predict_proba(rows))


def test_equals_predict_proba_with_leaves_above_the_bottom(inputs, labels) -> None:
    model = _fit(inputs, labels, max_depth=3, max_leaf_nodes=5)
    trees = [regressor.tree_ for regressor in model.estimators_[:, 0]]
    assert max(tree.max_depth for tree in trees) == 3
    assert max(tree.n_leaves for tree in trees) < 2**3
    rows = _rows_on_thresholds(model, inputs[1000:2000], seed=6)

    got = CompiledGradientBoosting(model).predict_proba(rows)

    assert np.array_equal(got, model.predict_proba(rows))


@pytest.mark.parametrize("max_depth", [1, 2])
def test_equals_predict_proba_for_shallower_models(inputs, labels, max_depth: int) -> None:
    model = _fit(inputs, labels, max_depth=max_depth)
    rows = _rows_on_thresholds(model, inputs[1000:2000], seed=7)

    got = CompiledGradientBoosting(model).predict_proba(rows)

    assert np.array_equal(got, model.predict_proba(rows))


@pytest.mark.parametrize("shape", [(17,), (1, 16), (2, 18), (1, 1, 17)])
def test_inputs_of_another_shape_are_refused(estimator, shape: tuple[int, ...]) -> None:
    compiled = CompiledGradientBoosting(estimator)

    with pytest.raises(ValueError, match=r"shape \(n_rows, 17\)"):
        compiled.predict_proba(np.zeros(shape))


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"loss": "exponential"}, "log_loss"),
        ({"init": "zero"}, "default init"),
        ({"init": DummyClassifier(strategy="prior")}, "default init"),
        ({"max_depth": MAX_DEPTH + 1}, "deeper than MAX_DEPTH"),
    ],
    ids=["exponential-loss", "zero-init", "init-estimator", "too-deep"],
)
def test_models_it_cannot_reproduce_are_refused(inputs, labels, params, reason: str) -> None:
    model = _fit(inputs, labels, **params)

    with pytest.raises(ValueError, match=reason):
        CompiledGradientBoosting(model)


def test_a_multiclass_model_is_refused(inputs) -> None:
    three_classes = np.arange(1000) % 3
    model = GradientBoostingClassifier(n_estimators=3).fit(inputs[:1000], three_classes)

    with pytest.raises(ValueError, match="3 classes"):
        CompiledGradientBoosting(model)


def test_an_unfitted_model_or_another_estimator_is_refused() -> None:
    with pytest.raises(NotFittedError):
        CompiledGradientBoosting(GradientBoostingClassifier())
    with pytest.raises(ValueError, match="expected a GradientBoostingClassifier"):
        CompiledGradientBoosting(HistGradientBoostingClassifier())
