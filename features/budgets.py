"""Latency budgets by use case: the whole SLA and the feature-retrieval share, at p99.

The service takes its feature deadline from a profile; ``featserve sla``
checks a deployment against one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["PROFILES", "LatencyBudget", "ProfileName"]

ProfileName = Literal["payments", "recommendation", "search", "ads", "personalization"]


@dataclass(frozen=True)
class LatencyBudget:
    """Milliseconds at p99 for the whole request and for feature retrieval."""

    total_ms: float
    features_ms: float


PROFILES = MappingProxyType(
    {
        "payments": LatencyBudget(total_ms=50, features_ms=10),
        "recommendation": LatencyBudget(total_ms=100, features_ms=20),
        "search": LatencyBudget(total_ms=200, features_ms=30),
        "ads": LatencyBudget(total_ms=10, features_ms=3),
        "personalization": LatencyBudget(total_ms=200, features_ms=40),
    }
)
"""The usual budgets of each use case: feature retrieval gets a small share, so that the
model, not the lookups, dominates a request."""
