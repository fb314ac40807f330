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
  ``edge`` middlewares (refusal log, tokens, bodies, admission) run right after BentoML's
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
  ``UNMATCHED_PATH_LABEL`` otherwise.  Its tracing layer (OpenTelemetry's)
  named each request's span after the path too: it is given span names by
  route the same way.
- Tracing's work on a request nobody samples: BentoML's sampler
  (``ParentBasedTraceIdRatio``) *records* every request it does not sample
  (``RECORD_ONLY``, to have ids), so with traces off every request built and
  ended four SDK spans, and ``StageSpans`` saw a recording span and added one per
  stage (a third of a ``/features`` request's CPU, docs/benchmarks.md). It is
  replaced by OpenTelemetry's own ``ParentBased(TraceIdRatioBased(rate))``: an
  unsampled request gets a non-recording span, which still carries the ids
  BentoML puts in ``X-BentoML-Request-ID``. Its tracing layer is also told to
  leave out the ``http send`` and ``http receive`` child spans (three per
  request, each through the whole stack): the server span holds the status.
  When nothing reads its spans (traces off and no access log, which prints
  their ids), ``install_adaptations(tracing_layer=False)`` leaves the layer
  out: it still cost an eighth of a ``/features`` request, non-recording.
- BentoML's API method binding: ``getattr(instance, api_name)`` (which BentoML's
  endpoint does for every request) rebuilt the bound caller with
  ``inspect.signature``; ``_bound_once`` builds it once per instance.
- BentoML's JSON answers: an API's output went out as an ``IterableResponse``,
  chunked, its body in two ASGI messages (the JSON, then an empty last one),
  each passed down through every middleware's ``send``; ``_whole_response``
  sends the same bytes as one body with a ``Content-Length``. An output that is
  not a model of fields (``/features``' ``dict``) was dumped twice and encoded
  by the standard library's ``json`` (``IORootModel.model_dump_json``);
  ``_root_json`` has pydantic encode it once, by the output's declared type.
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
- The HTTP server: BentoML's worker builds ``uvicorn.Config`` itself and
  passes no header or connection bounds (uvicorn's httptools protocol has
  none: a 1 MB header, 20,000 headers, headers sent a byte a second and
  connections that send nothing were all kept).  ``uvicorn.Config`` is
  replaced by a subclass that serves with ``BoundedHttpToolsProtocol``,
  which enforces ``ConnectionLimits`` (see there), and uvicorn's
  "Invalid HTTP request received." warning, one per malformed request, is
  turned into a rate-limited refusal line.
- The HTTP server's exit: uvicorn stops at the first SIGTERM, closing
  keep-alive connections that clients may be sending on. ``uvicorn.Server``
  is replaced by ``DrainingServer``, which on SIGTERM drains for ``drain_s``
  first (``service.middleware.drain``); a second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import bentoml
import pydantic
import uvicorn
from _bentoml_impl.server import app as bentoml_app
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import IOMixin, IORootModel, IterableResponse
from _bentoml_sdk.method import APIMethod
from bentoml._internal.server.http import traffic
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.utils import telemetry
from bentoml.exceptions import BentoMLException
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from pydantic import ConfigDict
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.docs_page import CONTENT_SECURITY_POLICY, DOCS_PAGE_HTML
from service.middleware.drain import DRAIN
from service.middleware.refusal_log import REFUSAL_LOGGER, RefusalLog
from service.middleware.request_timeout import CancellingTimeoutMiddleware
from service.middleware.route_labels import UNMATCHED_PATH_LABEL, route_label

__all__ = [
    "ADAPTED_BENTOML_VERSION",
    "BENTOML_ROUTES",
    "BoundedHttpToolsProtocol",
    "ConnectionLimits",
    "RouteLabelledTrafficMetrics",
    "SampledOnly",
    "configure_models",
    "declare_json_outputs",
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

_TRACING: object = OpenTelemetryMiddleware
"""BentoML's tracing layer, whose span names ``_named_by_route`` sets."""

_BENTOML_LOG_EXCEPTION = bentoml_app.log_exception
"""BentoML's own ``log_exception``, still called for server faults."""

_BENTOML_MIDDLEWARES = ServiceAppFactory.middlewares
"""BentoML's own ``middlewares`` property, kept to build on (and for tests to restore)."""

_BENTOML_LOCAL_CALL = APIMethod._local_call
"""BentoML's own builder of an API method's caller bound to a service instance."""


class SampledOnly(ParentBased):
    """BentoML's sampler's decisions (a ``rate`` share of new traces, a parent's decision
    followed) without recording what it does not sample."""

    def __init__(self, rate: float) -> None:
        super().__init__(root=TraceIdRatioBased(rate))


_BENTOML_TO_HTTP_RESPONSE = IOMixin.__dict__["to_http_response"].__func__
"""BentoML's own ``IOMixin.to_http_response`` (a classmethod's function)."""


async def _whole_response(cls: type[IOMixin], obj: Any, serde: Any) -> Response:
    """BentoML's response for ``obj``; an ``IterableResponse`` (a JSON answer) as one body."""
    response = await _BENTOML_TO_HTTP_RESPONSE(cls, obj, serde)
    if type(response) is not IterableResponse:
        return cast(Response, response)
    body = b"".join(response.body_iterator)
    return Response(body, status_code=response.status_code, headers=dict(response.headers))


_ROOT_ADAPTERS: dict[type, pydantic.TypeAdapter[Any]] = {}
"""A ``TypeAdapter`` of each root output model's declared type, made at its first answer."""


def _root_json(self: IORootModel[Any], **kwargs: Any) -> str:
    """An output's JSON, encoded by pydantic for the output's declared type."""
    model = type(self)
    adapter = _ROOT_ADAPTERS.get(model)
    if adapter is None:
        declared: Any = model.model_fields["root"].annotation
        adapter = _ROOT_ADAPTERS[model] = pydantic.TypeAdapter(declared)
    return adapter.dump_json(self.root, **kwargs).decode()


_CALLERS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Each service instance's bound API callers, by API name."""


def _bound_once(method: APIMethod[..., Any], instance: Any) -> Any:
    """BentoML's ``_local_call``, built once per (service instance, API)."""
    callers = _CALLERS.setdefault(instance, {})
    caller = callers.get(method.name)
    if caller is None:
        caller = callers[method.name] = _BENTOML_LOCAL_CALL(method, instance)
    return caller


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


def _named_by_route(layer: Middleware, routes: Collection[str]) -> Middleware:
    """``layer``, or BentoML's tracing layer naming spans by route instead of by path and
    without its ``http send`` and ``http receive`` child spans."""
    if layer.cls is not _TRACING:
        return layer

    def span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"{scope.get('method', 'HTTP')} {route_label(scope.get('path', ''), routes)}", {}

    # BentoML builds its list afresh each time the stack is built: this layer is ours to set.
    layer.kwargs["default_span_details"] = span_details
    layer.kwargs["exclude_spans"] = ["receive", "send"]
    return layer


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


@dataclass(frozen=True)
class ConnectionLimits:
    """What one worker's HTTP server allows a connection (the settings of the same names)."""

    header_timeout_s: float = 10.0
    """How long a request's line and headers may take to arrive, from its first byte (or, on a
    new connection, from the connect); later: 408 and the connection closed."""
    max_header_bytes: int = 16384
    """The most bytes of request line and headers; more: 431 and the connection closed."""
    max_headers: int = 100
    """The most header fields; more: 431 and the connection closed."""
    max_connections: int = 1000
    """Connections one worker holds; a connection beyond it closes the oldest idle one (no
    request being served), or is itself closed when none is idle."""


_DEFAULT_LIMITS = ConnectionLimits()

_REFUSALS = RefusalLog(logging.getLogger(REFUSAL_LOGGER))
"""Refusals made below the ASGI app (by the server), written like the app's."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``limits`` on headers and connections.

    ``limits`` is set on a subclass made by ``bounded_protocol``.  The parser calls
    ``on_url``, ``on_header`` and ``on_headers_complete`` as bytes arrive; a request over a
    bound is answered at once and every later callback of the connection is ignored.
    """

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opened_at = time.monotonic()
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            idle = [c for c in self.connections if c is not self and _is_idle(c)]
            if idle:
                min(idle, key=_opened_at).transport.close()
            else:
                transport.close()
                return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        if self._header_timer is None:
            self._start_header_timer()

    def on_url(self, url: bytes) -> None:
        if self._refused or self._over_size(len(url)):
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused or self._over_size(len(name) + len(value) + 4):
            return
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _over_size(self, size: int) -> bool:
        self._header_bytes += size
        if self._header_bytes <= self.limits.max_header_bytes:
            return False
        self._refuse(431, f"request line and headers over {self.limits.max_header_bytes} bytes")
        return True

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            timeout = self.limits.header_timeout_s
            self._refuse(408, f"request line and headers not in within {timeout:g} s")

    def _refuse(self, status: int, problem: str) -> None:
        self._refused = True
        self._cancel_header_timer()
        _REFUSALS.refused(status, "OTHER", UNMATCHED_PATH_LABEL, ["headers"])
        reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        body = f'{{"error": "{problem}"}}'.encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def _opened_at(connection: Any) -> float:
    return float(getattr(connection, "_opened_at", 0.0))


def _is_idle(connection: Any) -> bool:
    """Whether a connection is serving no request (between requests, or still sending one)."""
    return connection.cycle is None or connection.cycle.response_complete


def bounded_protocol(limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
    """``BoundedHttpToolsProtocol`` with ``limits``."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


_UVICORN_CONFIG = uvicorn.Config
"""uvicorn's own ``Config``, which BentoML's worker builds its server from."""


def _bounded_config(protocol: type[asyncio.Protocol]) -> type[uvicorn.Config]:
    class BoundedConfig(_UVICORN_CONFIG):
        """uvicorn's ``Config``, serving with ``protocol``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "http": protocol})

    return BoundedConfig


_UVICORN_SERVER = uvicorn.Server
"""uvicorn's own ``Server``, which BentoML's worker runs."""


def _draining_server(drain_s: float) -> type[uvicorn.Server]:
    class DrainingServer(_UVICORN_SERVER):
        """uvicorn's ``Server``: the first SIGTERM or SIGINT starts the drain, and the server
        stops (as uvicorn does) once ``drain_s`` has passed; another signal stops it now."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if drain_s > 0 and not DRAIN.draining:
                DRAIN.begin()
                logging.getLogger(__name__).info(
                    "signal %d: draining for %g s (unready, closing connections)", sig, drain_s
                )
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            # uvicorn asks every 0.1 s whether to stop.
            if DRAIN.over(drain_s) and not self.should_exit:
                _stop_listening(self.servers)
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer


def _stop_listening(servers: Sequence[asyncio.Server]) -> None:
    """Refuse new connections from now on. Shut down, not just closed: ``bentoml serve``
    holds the listening socket too, so closing this worker's copy alone would leave new
    connections waiting, unanswered, until they are reset when ``bentoml serve`` exits."""
    for server in servers:
        for listening in server.sockets:
            # asyncio's socket wrapper refuses shutdown(); a duplicate of the descriptor
            # shuts down the one socket they share.
            with (
                contextlib.suppress(OSError),
                socket.fromfd(listening.fileno(), listening.family, listening.type) as duplicate,
            ):
                duplicate.shutdown(socket.SHUT_RD)


class _InvalidRequestsAsRefusals(logging.Filter):
    """Turns uvicorn's warning per malformed request into a rate-limited refusal line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid HTTP request received.":
            _REFUSALS.refused(400, "OTHER", UNMATCHED_PATH_LABEL, ["request"])
            return False
        return True


_INVALID_REQUESTS_FILTER = _InvalidRequestsAsRefusals()


def declare_json_outputs(apis: Iterable[Any]) -> None:
    """Give each API's output its media type once: BentoML 1.4.40 rebuilds an output's JSON
    schema on every response just to pick it, a large share of a request's CPU
    (docs/benchmarks.md)."""
    for api in apis:
        api.output_spec.media_type = "application/json"


def install_adaptations(
    edge: Sequence[Middleware],
    routes: Collection[str] = (),
    input_models: Collection[str] = (),
    limits: ConnectionLimits = _DEFAULT_LIMITS,
    drain_s: float = 0.0,
    tracing_layer: bool = True,
) -> None:
    """Apply every adaptation; ``edge`` runs first in each service's middleware stack, after
    BentoML's traffic metrics, which label requests by path only for ``routes`` and BentoML's
    own (``BENTOML_ROUTES``); ``input_models``: the names of the API's input models, whose
    validation errors are logged as refusals rather than server faults; ``limits``: what the
    HTTP server allows each connection; ``drain_s``: how long a worker drains on SIGTERM
    before its server stops (``service.middleware.drain``); ``tracing_layer``: whether
    BentoML's OpenTelemetry layer stays (leave it out only when no trace is exported and no
    access log prints span ids).

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
    telemetry.ParentBasedTraceIdRatio = SampledOnly  # type: ignore[attr-defined]
    APIMethod._local_call = _bound_once
    IOMixin.to_http_response = classmethod(_whole_response)
    IORootModel.model_dump_json = _root_json
    ServiceAppFactory.index_page = _docs_page
    uvicorn.Config = _bounded_config(bounded_protocol(limits))  # type: ignore[misc]
    uvicorn.Server = _draining_server(drain_s)  # type: ignore[misc]
    logging.getLogger("uvicorn.error").addFilter(_INVALID_REQUESTS_FILTER)
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
        others = [
            _named_by_route(m, labelled)
            for m in bentoml_layers
            if m.cls is not _TRAFFIC_METRICS and (tracing_layer or m.cls is not _TRACING)
        ]
        return [*metrics, *edge, *others]

    ServiceAppFactory.middlewares = property(edge_first)
