"""The synthetic fraud dataset: users, transactions, defaults for unknown entities."""

from __future__ import annotations

import numpy as np
import pytest

from service.harness.example import EXAMPLE_REGISTRY, example_module

_dataset = example_module("dataset")
HISTORY_DAYS = _dataset.HISTORY_DAYS
entity_id = _dataset.entity_id
generate_transactions = _dataset.generate_transactions
generate_users = _dataset.generate_users

NOW = 1_767_225_600
GROUP = EXAMPLE_REGISTRY.group("user", "features")


@pytest.fixture(scope="module")
def users():
    return generate_users(2000, seed=1, now=NOW)


@pytest.fixture(scope="module")
def transactions(users):
    return generate_transactions(users, 20_000, seed=2, now=NOW)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, "u000000"), (123, "u000123"), (9999, "u009999"), (1234567, "u1234567")],
)
def test_entity_id_pads_to_six_digits(index: int, expected: str) -> None:
    assert entity_id(index) == expected


def test_users_have_every_feature_of_the_group_with_its_dtype(users) -> None:
    assert len(users) == 2000
    assert users.entity_ids[:2] == ("u000000", "u000001")
    assert users.entity_ids[-1] == "u001999"
    assert list(users.columns) == [
        "tx_count_1h", "tx_sum_1h", "tx_count_24h", "tx_sum_24h", "account_age_days",
        "avg_tx_90d", "distinct_merchants_7d", "credit_score_bucket", "is_premium", "last_login_ts",
    ]  # fmt: skip
    for feature in GROUP.features:
        column = users.columns[feature.name]
        assert column.shape == (2000,)
        assert column.dtype == (np.int64 if feature.type_name == "int" else np.float64)


def test_user_features_are_plausible(users) -> None:
    c = users.columns
    assert (c["tx_count_1h"] >= 0).all()
    assert (c["tx_count_1h"] <= c["tx_count_24h"]).all()
    assert (c["tx_sum_1h"] >= 0).all()
    assert (c["tx_sum_24h"] >= c["tx_sum_1h"] - 0.01).all()
    assert (c["tx_sum_1h"][c["tx_count_1h"] == 0] == 0).all()
    assert (c["account_age_days"] >= 0).all()
    assert (c["account_age_days"] <= 3650).all()
    assert (c["avg_tx_90d"] > 0).all()
    assert (c["distinct_merchants_7d"] >= 0).all()
    assert set(np.unique(c["credit_score_bucket"]).tolist()) == {0, 1, 2, 3, 4}
    assert set(np.unique(c["is_premium"]).tolist()) == {0, 1}
    assert (c["last_login_ts"] <= NOW).all()
    assert (c["last_login_ts"] > NOW - 200 * 86400).all()


def test_record_gives_python_values_of_the_declared_dtype(users) -> None:
    record = users.record(17)

    assert list(record) == list(GROUP.feature_names)
    for feature in GROUP.features:
        assert type(record[feature.name]) is (int if feature.type_name == "int" else float)
        assert record[feature.name] == users.columns[feature.name][17]


def test_columns_are_read_only(users, transactions) -> None:
    with pytest.raises(ValueError):
        users.columns["tx_count_1h"][0] = 5
    with pytest.raises(ValueError):
        transactions.label[0] = 1
    with pytest.raises(TypeError):
        transactions.stored["avg_tx_90d"] = np.zeros(3)


def test_users_are_deterministic_for_a_seed() -> None:
    first, again, other = (generate_users(500, seed, NOW) for seed in (4, 4, 5))

    for name in GROUP.feature_names:
        assert np.array_equal(first.columns[name], again.columns[name])
    assert not np.array_equal(first.columns["avg_tx_90d"], other.columns["avg_tx_90d"])


def test_transactions_are_deterministic_for_a_seed(users) -> None:
    first, again, other = (generate_transactions(users, 3000, seed, NOW) for seed in (6, 6, 7))

    assert first.entity_ids == again.entity_ids
    for field in ("missing", "amount", "timestamp", "label"):
        assert np.array_equal(getattr(first, field), getattr(again, field))
    for name in GROUP.feature_names:
        assert np.array_equal(first.stored[name], again.stored[name])
    assert first.entity_ids != other.entity_ids
    assert not np.array_equal(first.amount, other.amount)


def test_missing_entities_get_exactly_the_registry_defaults(users, transactions) -> None:
    missing = transactions.missing

    assert 0.04 < missing.mean() < 0.06
    for name, default in GROUP.defaults.items():
        column = transactions.stored[name][missing]
        assert (column == default).all(), name
        assert column.dtype == users.columns[name].dtype
    known = set(users.entity_ids)
    ids = np.array(transactions.entity_ids)
    assert not known & set(ids[missing].tolist())
    assert set(ids[~missing].tolist()) <= known


def test_known_entities_see_their_users_snapshot(users, transactions) -> None:
    index = {eid: i for i, eid in enumerate(users.entity_ids)}
    rows = [(t, index[eid]) for t, eid in enumerate(transactions.entity_ids) if eid in index]
    tx_rows, user_rows = map(np.array, zip(*rows, strict=True))

    for name in GROUP.feature_names:
        if name != "last_login_ts":
            assert np.array_equal(
                transactions.stored[name][tx_rows], users.columns[name][user_rows]
            )
    # The last login is as long before each transaction as the user's is before NOW.
    gap = transactions.timestamp[tx_rows] - transactions.stored["last_login_ts"][tx_rows]
    assert np.array_equal(gap, NOW - users.columns["last_login_ts"][user_rows])


def test_no_missing_entities_when_the_fraction_is_zero(users) -> None:
    transactions = generate_transactions(users, 1000, seed=3, now=NOW, missing_fraction=0.0)

    assert not transactions.missing.any()


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_missing_fraction_must_be_a_share(users, fraction: float) -> None:
    with pytest.raises(ValueError, match="missing_fraction"):
        generate_transactions(users, 10, seed=3, now=NOW, missing_fraction=fraction)


def test_transactions_spread_over_the_history_window(transactions) -> None:
    ts = transactions.timestamp
    first_day = NOW // 86400 - HISTORY_DAYS

    assert (ts < NOW).all()
    assert (ts >= first_day * 86400).all()
    assert len(np.unique(ts // 86400)) == HISTORY_DAYS
    assert len(np.unique(ts // 3600 % 24)) == 24
    assert (transactions.amount > 0).all()


def test_fraud_is_a_few_percent_and_follows_risk(transactions) -> None:
    label = transactions.label.astype(bool)
    known = ~transactions.missing
    stored = transactions.stored
    ratio = transactions.amount / np.maximum(stored["avg_tx_90d"], 1.0)
    night = transactions.timestamp // 3600 % 24 < 6

    assert 0.01 < transactions.fraud_rate < 0.08
    assert 0.005 < label[~known].mean() < 0.2
    burst = known & (stored["tx_count_1h"] >= 4)
    assert label[burst].mean() > 2 * label[known & ~burst].mean()
    big = known & (ratio > 4)
    assert label[big].mean() > 2 * label[known & ~big].mean()
    assert label[night].mean() > label[~night].mean()
