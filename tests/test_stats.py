"""The nearest-rank percentile, checked against ranks worked out by hand."""

from __future__ import annotations

import math

import pytest

from service.harness.stats import percentile, percentiles


def test_p99_of_100_samples_is_the_second_slowest() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 15.0), (5, 15.0), (30, 20.0), (40, 20.0), (50, 35.0), (100, 50.0)],
)
def test_the_wikipedia_example(q: float, expected: float) -> None:
    # The worked nearest-rank example: ranks ceil(q/100 * 5) of 15, 20, 35, 40, 50.
    assert percentile([50.0, 15.0, 40.0, 20.0, 35.0], q) == expected


def test_every_answer_is_a_measured_value() -> None:
    assert percentiles([1.0, 2.0], [50, 90, 99]) == [1.0, 2.0, 2.0]


def test_no_samples_is_nan() -> None:
    assert math.isnan(percentile([], 50))
