"""The adaptations of BentoML's internals: each still reaches what it changes.

These fail when a BentoML upgrade moves or renames something that
``service.bentoml_adapter`` changes, instead of the protection going quietly.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import bentoml
import pydantic
import pytest
import uvicorn
from _bentoml_impl.serde import JSONSerde
from _bentoml_impl.server import app as bentoml_app
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_impl.worker import service as bentoml_worker
from _bentoml_sdk.io_models import IOMixin, IORootModel
from _bentoml_sdk.method import APIMethod
from bentoml._internal.configuration import containers
from bentoml._internal.server.http import traffic
from bentoml._internal.utils import telemetry
from bentoml.exceptions import BentoMLException
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace.sampling import Decision
from prometheus_client import generate_latest
from starlette.middleware import Middleware
from starlette.requests import Request

from service import bentoml_adapter
from service.bentoml_adapter import (
    ADAPTED_BENTOML_VERSION,
    BoundedHttpToolsProtocol,
    ConnectionLimits,
    RouteLabelledTrafficMetrics,
    SampledOnly,
    configure_models,
    install_adaptations,
    is_client_error,
)
from service.docs_page import CONTENT_SECURITY_POLICY, DOCS_PAGE_HTML
from service.middleware import drain
from service.middleware.admission import AdmissionMiddleware
from service.middleware.request_timeout import CancellingTimeoutMiddleware
from service.middleware.route_labels import UNMATCHED_PATH_LABEL


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo every adaptation after the test (monkeypatch restores each attribute)."""
    monkeypatch.setattr(ServiceAppFactory, "middlewares", ServiceAppFactory.middlewares)
    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)
    monkeypatch.setattr(bentoml_app, "log_exception", bentoml_app.log_exception)
    monkeypatch.setattr(ServiceAppFactory, "index_page", ServiceAppFactory.index_page)
    monkeypatch.setattr(uvicorn, "Config", uvicorn.Config)
    monkeypatch.setattr(uvicorn, "Server", uvicorn.Server)
    monkeypatch.setattr(telemetry, "ParentBasedTraceIdRatio", telemetry.ParentBasedTraceIdRatio)  # type: ignore[attr-defined]
    monkeypatch.setattr(APIMethod, "_local_call", APIMethod._local_call)
    monkeypatch.setattr(IOMixin, "to_http_response", IOMixin.__dict__["to_http_response"])
    monkeypatch.setattr(IORootModel, "model_dump_json", IORootModel.model_dump_json)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    filters = list(uvicorn_errors.filters)
    yield
    uvicorn_errors.filters[:] = filters


@bentoml.service
class Tiny:
    @bentoml.api
    def ping(self) -> str:
        return "pong"

    @bentoml.api
    def info(self) -> dict[str, Any]:
        return {"name": "tiny", "sizes": [1, 2.5, None]}


def test_the_installed_bentoml_is_the_adapted_release() -> None:
    assert bentoml.__version__ == ADAPTED_BENTOML_VERSION


def test_install_refuses_another_bentoml_release(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bentoml, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"9\.9\.9"):
        install_adaptations(edge=[])


def test_bentoml_builds_its_stack_with_the_cancelling_timeout(restored: None) -> None:
    install_adaptations(edge=[])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    classes = [middleware.cls for middleware in app.user_middleware]
    assert CancellingTimeoutMiddleware in classes
    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware


def test_the_edge_runs_right_after_bentoml_traffic_metrics(restored: None) -> None:
    admission = Middleware(AdmissionMiddleware, limit=3, paths={"/ping"})
    install_adaptations(edge=[admission])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    metrics, edge, *others = app.user_middleware
    assert metrics.cls is RouteLabelledTrafficMetrics
    assert edge.cls is AdmissionMiddleware
    assert edge.kwargs == {"limit": 3, "paths": {"/ping"}}
    assert CancellingTimeoutMiddleware in [middleware.cls for middleware in others]


def test_installing_again_replaces_the_edge(restored: None) -> None:
    install_adaptations(edge=[Middleware(AdmissionMiddleware, limit=3, paths={"/ping"})])
    install_adaptations(edge=[])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    assert AdmissionMiddleware not in [middleware.cls for middleware in app.user_middleware]


def test_bentoml_metrics_see_only_known_routes_and_the_app_sees_the_real_path() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        layer = RouteLabelledTrafficMetrics(
            app, routes={"/score"}, namespace="adapter_test", skip_paths=()
        )
        for path in ("/score", "/scan-SECRET-1", "/scan-SECRET-2"):
            scope: dict[str, Any] = {"type": "http", "path": path, "method": "GET", "headers": []}
            await layer(scope, _no_body, _discard)

    asyncio.run(scenario())
    assert seen == ["/score", "/scan-SECRET-1", "/scan-SECRET-2"]
    text = generate_latest().decode()
    counted = [line for line in text.splitlines() if line.startswith("adapter_test_request_total")]
    assert any('endpoint="/score"' in line for line in counted), counted
    assert any(f'endpoint="{UNMATCHED_PATH_LABEL}"' in line for line in counted), counted
    assert "SECRET" not in text


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    return None


class Input(pydantic.BaseModel):
    amount: float


class Output(pydantic.BaseModel):
    score: float


def _validation_error(model: type[pydantic.BaseModel]) -> pydantic.ValidationError:
    try:
        model.model_validate({"amount": "café", "score": "café"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("the model accepted a string for a number")


@pytest.mark.parametrize(
    ("exc", "client"),
    [
        (_validation_error(Input), True),
        (_validation_error(Output), False),  # our answer failed its model: a server fault
        (BentoMLException("no", error_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE), True),
        (BentoMLException("boom"), False),
        (RuntimeError("boom"), False),
    ],
)
def test_what_is_a_client_error(exc: BaseException, client: bool) -> None:
    assert is_client_error(exc, {"Input"}) is client


def test_bentoml_logs_server_faults_only(restored: None, caplog: pytest.LogCaptureFixture) -> None:
    install_adaptations(edge=[], input_models={"Input"})
    request = Request({"type": "http", "path": "/score", "method": "POST", "headers": []})
    with caplog.at_level(logging.INFO):
        for exc in (_validation_error(Input), RuntimeError("a bug of ours")):
            try:
                raise exc
            except Exception:
                bentoml_app.log_exception(request)  # what BentoML's API wrapper calls
    [fault] = caplog.records
    assert fault.levelno == logging.ERROR
    assert fault.exc_info is not None and fault.exc_info[0] is RuntimeError


def test_configure_models_reaches_bentoml_input_models() -> None:
    @bentoml.service
    class Strict:
        @bentoml.api
        def ping(self, name: str) -> str:
            return name

    [api] = Strict.apis.values()  # type: ignore[attr-defined]
    model = api.input_spec
    assert model.model_validate({"name": "a", "extra": 1}).name == "a"  # pydantic's default
    configure_models([model], pydantic.ConfigDict(extra="forbid"))
    with pytest.raises(pydantic.ValidationError, match="extra"):
        model.model_validate({"name": "a", "extra": 1})


def test_the_index_page_is_featserve_own(restored: None) -> None:
    install_adaptations(edge=[])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "scheme": "http",
        "path": "/",
        "method": "GET",
        "headers": [],
        "query_string": b"",
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, _no_body, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 200
    assert body.decode() == DOCS_PAGE_HTML
    headers = dict(start["headers"])
    assert headers[b"content-security-policy"].decode() == CONTENT_SECURITY_POLICY


def test_bentoml_workers_build_their_server_from_uvicorn_config() -> None:
    # The bounded protocol reaches the server only through uvicorn.Config, looked up when
    # BentoML's worker starts its server (after the service module was imported).
    source = inspect.getsource(bentoml_worker.main.callback)  # a click command
    assert "import uvicorn" in source
    assert "config = uvicorn.Config(" in source
    assert "uvicorn.Server(config).run(" in source
    assert "http=" not in source, "BentoML now picks the protocol itself"


def test_uvicorn_serves_with_the_bounded_protocol(restored: None) -> None:
    limits = ConnectionLimits(header_timeout_s=3.0, max_header_bytes=2048, max_headers=20)
    install_adaptations(edge=[], limits=limits)
    config = uvicorn.Config(app=Tiny.to_asgi(), http="auto")  # type: ignore[attr-defined]
    config.load()
    assert issubclass(config.http_protocol_class, BoundedHttpToolsProtocol)
    assert config.http_protocol_class.limits == limits


def test_uvicorn_server_drains_on_the_first_signal_and_stops_after_the_drain(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What DrainingServer relies on: uvicorn asks on_tick whether to stop and stops on
    # should_exit; handle_exit is the signal handler. Here, on a server that never ran.
    monkeypatch.setattr(drain, "DRAIN", drain.Drain())
    monkeypatch.setattr(bentoml_adapter, "DRAIN", drain.DRAIN)
    install_adaptations(edge=[], drain_s=60.0)
    server = uvicorn.Server(uvicorn.Config(app=Tiny.to_asgi()))  # type: ignore[attr-defined]
    assert "on_tick" in vars(uvicorn.Server.__mro__[1]) and hasattr(server, "should_exit")
    server.handle_exit(signal.SIGTERM, None)
    assert drain.DRAIN.draining and not server.should_exit
    assert asyncio.run(server.on_tick(1)) is False  # still draining
    server.handle_exit(signal.SIGTERM, None)  # a second signal stops it now
    assert server.should_exit


def test_uvicorn_invalid_request_warnings_become_refusal_lines(
    restored: None, caplog: pytest.LogCaptureFixture
) -> None:
    install_adaptations(edge=[])
    uvicorn_errors = logging.getLogger("uvicorn.error")
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            uvicorn_errors.warning("Invalid HTTP request received.")
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert caplog.records[0].getMessage().startswith("refused 400")


def test_tracing_names_spans_by_route(restored: None) -> None:
    install_adaptations(edge=[], routes={"/score"})
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    [tracing] = [m for m in app.user_middleware if m.cls is OpenTelemetryMiddleware]
    name_of = tracing.kwargs["default_span_details"]
    assert name_of({"method": "POST", "path": "/score"}) == ("POST /score", {})
    assert name_of({"method": "GET", "path": "/user/alice/SECRET"}) == ("GET other", {})


def test_tracing_leaves_out_the_send_and_receive_spans(restored: None) -> None:
    install_adaptations(edge=[])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    [tracing] = [m for m in app.user_middleware if m.cls is OpenTelemetryMiddleware]
    assert sorted(tracing.kwargs["exclude_spans"]) == ["receive", "send"]


def test_bentoml_samples_with_a_sampler_that_records_only_what_it_samples(restored: None) -> None:
    # BentoML imports its sampler class from the telemetry module when it builds its tracer
    # provider, so the class there is the one it uses.
    assert "ParentBasedTraceIdRatio(sample_rate)" in inspect.getsource(containers)
    install_adaptations(edge=[])
    assert telemetry.ParentBasedTraceIdRatio is SampledOnly  # type: ignore[attr-defined]
    never, always = SampledOnly(0.0), SampledOnly(1.0)
    trace_id = 0x5F3759DF5F3759DF5F3759DF5F3759DF
    assert never.should_sample(None, trace_id, "POST /score").decision is Decision.DROP
    assert (
        always.should_sample(None, trace_id, "POST /score").decision is Decision.RECORD_AND_SAMPLE
    )


def test_an_api_caller_is_bound_once_per_instance(restored: None) -> None:
    install_adaptations(edge=[])
    first, second = Tiny.inner(), Tiny.inner()  # type: ignore[attr-defined]
    assert first.ping is first.ping
    assert first.ping is not second.ping
    assert first.ping() == "pong"


def test_a_json_answer_goes_out_as_one_body_of_known_length(restored: None) -> None:
    install_adaptations(edge=[])
    output = Tiny.apis["info"].output_spec  # type: ignore[attr-defined]
    answer = asyncio.run(output.to_http_response({"name": "tiny", "sizes": [1, 2.5]}, JSONSerde()))
    assert answer.body == b'{"name":"tiny","sizes":[1,2.5]}'
    assert answer.headers["content-length"] == str(len(answer.body))
    assert answer.headers["content-type"] == "application/json"


def test_the_tracing_layer_is_left_out_when_nothing_reads_its_spans(restored: None) -> None:
    install_adaptations(edge=[], tracing_layer=False)
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    classes = [middleware.cls for middleware in app.user_middleware]
    assert OpenTelemetryMiddleware not in classes
    assert CancellingTimeoutMiddleware in classes
