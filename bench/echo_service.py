"""A bare BentoML echo service: BentoML's own overhead, with or without our timeout fix.

Usage: ``BENCH_PATCH_TIMEOUT=1 BENCH_GC_FREEZE=1 bentoml serve bench.echo_service:Echo``

``BENCH_PATCH_TIMEOUT=1`` installs ``service.middleware.request_timeout`` (the product
service always does); unset, BentoML runs as shipped, with its leaky
request-timeout middleware.  ``BENCH_GC_FREEZE=1`` freezes the start-up
objects out of the garbage collector's sight, as the product service does.
The access log is off, as in the product.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import bentoml

from service.bentoml_adapter import install_adaptations

__all__ = ["Echo"]

PATCH_TIMEOUT = os.environ.get("BENCH_PATCH_TIMEOUT") == "1"
"""Whether to swap in ``CancellingTimeoutMiddleware``."""

GC_FREEZE = os.environ.get("BENCH_GC_FREEZE") == "1"
"""Whether to ``gc.freeze()`` once the worker has started."""

if PATCH_TIMEOUT:
    install_adaptations(edge=[])


@bentoml.service(logging={"access": {"enabled": False}})
class Echo:
    """Answers every request with its own JSON body."""

    @bentoml.on_startup
    def maybe_freeze(self) -> None:
        """Freeze start-up objects when ``BENCH_GC_FREEZE=1``."""
        if GC_FREEZE:
            gc.collect()
            gc.freeze()

    @bentoml.api
    async def echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Return the ``payload`` field unchanged."""
        return payload
