"""Every place featserve reaches into BentoML's (and its server's) internals, in one module.

BentoML 1.4.40 lets a service add ASGI middleware only after its own layers
and passes few settings to its HTTP server; featserve needs more than that.
Each adaptation here names what it changes and why; ``install_adaptations`` applies them
all, once, when the service module is imported (in every worker, before the
worker builds its app and its server).  ``tests/test_bentoml_adapter.py``
checks that BentoML still has each thing changed here, so an upgrade that
moves one fails a test instead of silently undoing a protection.

- The request-timeout layer: BentoML's ``TimeoutMiddleware`` leaks a timer
  per request, so its class is swapped for ``CancellingTimeoutMiddleware``
  (``service.middleware.request_timeout``).
- The middleware stack: ``ServiceAppFactory.middlewares`` is wrapped so the
  ``edge`` middlewares run ahead of BentoML's own layers (see
  ``service.middleware.admission`` for why admission must).
"""

from __future__ import annotations

from collections.abc import Sequence

import bentoml
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import traffic
from starlette.middleware import Middleware

from service.middleware.request_timeout import CancellingTimeoutMiddleware

__all__ = ["ADAPTED_BENTOML_VERSION", "install_adaptations"]

ADAPTED_BENTOML_VERSION = "1.4.40"
"""The BentoML release these adaptations were written against; any other is refused."""

_BENTOML_MIDDLEWARES = ServiceAppFactory.middlewares
"""BentoML's own ``middlewares`` property, kept to build on (and for tests to restore)."""


def install_adaptations(edge: Sequence[Middleware]) -> None:
    """Apply every adaptation; ``edge`` runs first in each service's middleware stack.

    Calling it again replaces the edge.
    """
    if bentoml.__version__ != ADAPTED_BENTOML_VERSION:
        raise RuntimeError(
            f"service.bentoml_adapter adapts BentoML {ADAPTED_BENTOML_VERSION}'s internals, "
            f"found {bentoml.__version__}: check each adaptation in its docstring against the "
            "new release, then run tests/test_bentoml_adapter.py"
        )
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware  # type: ignore[misc,assignment]
    edge = list(edge)

    def edge_first(factory: ServiceAppFactory) -> list[Middleware]:
        return [*edge, *_BENTOML_MIDDLEWARES.fget(factory)]

    ServiceAppFactory.middlewares = property(edge_first)
