"""ScoringService behind BentoML's own ``traffic.max_concurrency``, for ``bench.admission_bench``.

Usage: ``BENCH_MAX_CONCURRENCY=16 FEATSERVE_MAX_IN_FLIGHT=0 bentoml serve
bench.bentoml_limit_service:LimitedScorer``

The same service class, served by a second ``bentoml.service`` declaration
whose traffic settings bound the requests in flight; BentoML then answers
those beyond the bound with 429 (no ``Retry-After``).  featserve's own
admission middleware and its other ASGI additions are not on this one:
only BentoML's bound is.
"""

from __future__ import annotations

import os

import bentoml

from service.service import SETTINGS, ScoringService

__all__ = ["LimitedScorer"]

LimitedScorer = bentoml.service(
    name="LimitedScorer",
    workers=1,
    traffic={"max_concurrency": int(os.environ.get("BENCH_MAX_CONCURRENCY", "16"))},
    logging={"access": {"enabled": SETTINGS.access_log}},
)(ScoringService.inner)  # type: ignore[attr-defined]
