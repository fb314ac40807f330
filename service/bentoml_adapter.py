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
  ``edge`` middlewares (tokens, bodies, admission) run right after BentoML's
  traffic metrics (which then count their refusals too) and ahead of the rest
  of BentoML's layers: tracing, access log, the request timeout, and the
  service's own middlewares (see ``service.middleware.admission`` for why
  admission must come before them).
- The traffic metrics' labels: BentoML labels its request counters and
  histograms (``bentoml_service_request_total`` ...) with the request's path,
  whatever a client sends, so a scanner's 20,000 paths became 20,000 series
  for ever (memory, a ``/metrics`` of many megabytes, and the paths published).
  Its layer is built here behind ``RouteLabelledTrafficMetrics``, which shows
  it the path only when it is one of the service's own routes and
  ``UNMATCHED_PATH_LABEL`` otherwise.
- BentoML's ``log_exception``: it wrote every refused request body (a
  pydantic ``ValidationError`` of the API's input, a ``BentoMLException`` with
  a 4xx status) at ERROR with its traceback, pieces of the input included.
  The adapted one keeps that for server faults only; a refusal is
  written once, without input, by ``service.middleware.refusal_log``.
- BentoML's input models: it builds each API's body model from the method's
  signature, with pydantic's default configuration (unknown keys ignored);
  ``configure_models`` merges a configuration into them (for featserve, the
  unknown-keys rule of ``service.inputs``) and rebuilds their validators.
- The page at ``/``: BentoML's loads Google Tag Manager; ``index_page``
  replaces the method that answers it with ``service.docs_page``'s page and
  its Content-Security-Policy.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Sequence
from typing import Any, cast

import bentoml
import pydantic
from _bentoml_impl.server import app as bentoml_app
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import traffic
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml.exceptions import BentoMLException
from pydantic import ConfigDict
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.docs_page import CONTENT_SECURITY_POLICY, DOCS_PAGE_HTML
from service.middleware.request_timeout import CancellingTimeoutMiddleware
from service.middleware.route_labels import route_label

__all__ = [
    "ADAPTED_BENTOML_VERSION",
    "BENTOML_ROUTES",
    "RouteLabelledTrafficMetrics",
    "configure_models",
    "install_adaptations",
    "is_client_error",
]

ADAPTED_BENTOML_VERSION = "1.4.40"
"""The BentoML release these adaptations were written against; any other is refused."""

BENTOML_ROUTES = frozenset(
    {"/", "/docs.json", "/schema.json", "/livez", "/healthz", "/readyz", "/metrics"}
)
"""The paths BentoML itself serves on a service's app (its static files aside)."""

_REAL_PATH = "featserve.path"
"""Where ``RouteLabelledTrafficMetrics`` keeps a request's path while BentoML's layer runs."""

_TRAFFIC_METRICS: object = RunnerTrafficMetricsMiddleware
"""BentoML's per-request HTTP metrics layer, which the edge follows."""

_BENTOML_LOG_EXCEPTION = bentoml_app.log_exception
"""BentoML's own ``log_exception``, still called for server faults."""

_BENTOML_MIDDLEWARES = ServiceAppFactory.middlewares
"""BentoML's own ``middlewares`` property, kept to build on (and for tests to restore)."""


class RouteLabelledTrafficMetrics:
    """BentoML's traffic-metrics layer, shown ``UNMATCHED_PATH_LABEL`` for any path outside
    ``routes``; the layers after it see the request's own path."""

    def __init__(
        self, app: ASGIApp, routes: Collection[str], namespace: str, skip_paths: Sequence[str]
    ) -> None:
        self._app = app
        self._routes = frozenset(routes)
        self._metrics = RunnerTrafficMetricsMiddleware(
            self._with_real_path, namespace=namespace, skip_paths=skip_paths
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
        elif scope["path"] in self._routes:
            await self._metrics(scope, receive, send)
        else:
            label = route_label(scope["path"], self._routes)
            await self._metrics({**scope, "path": label, _REAL_PATH: scope["path"]}, receive, send)

    async def _with_real_path(self, scope: Scope, receive: Receive, send: Send) -> None:
        real_path = scope.get(_REAL_PATH)
        if real_path is not None:
            scope = {**scope, "path": real_path}
            del scope[_REAL_PATH]
        await self._app(scope, receive, send)


def is_client_error(exc: BaseException | None, input_models: Collection[str]) -> bool:
    """Whether BentoML answers ``exc`` with a 4xx because of the request: the API's input failed
    validation (a ``ValidationError`` of an input model; one of any other model is a server
    fault), or a ``BentoMLException`` with a 4xx status."""
    if isinstance(exc, pydantic.ValidationError):
        return exc.title in input_models
    if isinstance(exc, BentoMLException):
        return 400 <= exc.error_code.value < 500
    return False


def configure_models(models: Iterable[type[pydantic.BaseModel]], config: ConfigDict) -> None:
    """Merge ``config`` into each of ``models`` (BentoML's API input models) and rebuild it."""
    for model in models:
        model.model_config = {**model.model_config, **config}
        model.model_rebuild(force=True)


async def _docs_page(factory: ServiceAppFactory, request: Request) -> Response:
    """featserve's API page, in place of BentoML's (``ServiceAppFactory.index_page``)."""
    return HTMLResponse(
        DOCS_PAGE_HTML, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    )


def install_adaptations(
    edge: Sequence[Middleware], routes: Collection[str] = (), input_models: Collection[str] = ()
) -> None:
    """Apply every adaptation; ``edge`` runs first in each service's middleware stack, after
    BentoML's traffic metrics, which label requests by path only for ``routes`` and BentoML's
    own (``BENTOML_ROUTES``); ``input_models``: the names of the API's input models, whose
    validation errors are logged as refusals rather than server faults.

    Calling it again replaces the edge.
    """
    if bentoml.__version__ != ADAPTED_BENTOML_VERSION:
        raise RuntimeError(
            f"service.bentoml_adapter adapts BentoML {ADAPTED_BENTOML_VERSION}'s internals, "
            f"found {bentoml.__version__}: check each adaptation in its docstring against the "
            "new release, then run tests/test_bentoml_adapter.py"
        )
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware  # type: ignore[misc,assignment]
    input_names = frozenset(input_models)

    def log_server_faults(request: Any, exc_info: Any = True) -> None:
        # BentoML's log_exception for a server fault; nothing for a client's mistake.
        if not is_client_error(sys.exc_info()[1], input_names):
            _BENTOML_LOG_EXCEPTION(request, exc_info)

    bentoml_app.log_exception = log_server_faults
    ServiceAppFactory.index_page = _docs_page
    edge = list(edge)
    labelled = BENTOML_ROUTES | frozenset(routes)

    def edge_first(factory: ServiceAppFactory) -> list[Middleware]:
        bentoml_layers: list[Middleware] = _BENTOML_MIDDLEWARES.fget(factory)
        metrics = [
            Middleware(
                RouteLabelledTrafficMetrics,
                routes=labelled,
                namespace=str(m.kwargs["namespace"]),
                skip_paths=list(cast(Sequence[str], m.kwargs["skip_paths"])),
            )
            for m in bentoml_layers
            if m.cls is _TRAFFIC_METRICS
        ]
        others = [m for m in bentoml_layers if m.cls is not _TRAFFIC_METRICS]
        return [*metrics, *edge, *others]

    ServiceAppFactory.middlewares = property(edge_first)
