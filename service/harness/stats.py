"""The one percentile of the tree: nearest rank, as load tests and SLAs mean it.

The nearest-rank ``q``-th percentile is the smallest sample with at least
``q`` % of the samples at or below it: always a value that was measured,
never an interpolation between two (numpy's ``inverted_cdf`` method).  With
100 samples, p99 is the second slowest, not the slowest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["percentile", "percentiles"]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``, in any order; NaN when empty."""
    return percentiles(values, (q,))[0]


def percentiles(values: Iterable[float], qs: Sequence[float]) -> list[float]:
    """``percentile`` for each of ``qs``, sorting ``values`` once."""
    array = np.fromiter(values, dtype=np.float64)
    if array.size == 0:
        return [math.nan] * len(qs)
    return [float(p) for p in np.percentile(array, qs, method="inverted_cdf")]
