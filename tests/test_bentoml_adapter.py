"""The adaptations of BentoML's internals: each still reaches what it changes.

These fail when a BentoML upgrade moves or renames something that
``service.bentoml_adapter`` changes, instead of the protection going quietly.
"""

from __future__ import annotations

from collections.abc import Iterator

import bentoml
import pytest
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import traffic
from starlette.middleware import Middleware

from service.bentoml_adapter import ADAPTED_BENTOML_VERSION, install_adaptations
from service.middleware.admission import AdmissionMiddleware
from service.middleware.request_timeout import CancellingTimeoutMiddleware


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo every adaptation after the test (monkeypatch restores each attribute)."""
    monkeypatch.setattr(ServiceAppFactory, "middlewares", ServiceAppFactory.middlewares)
    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)
    yield


@bentoml.service
class Tiny:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


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


def test_the_edge_runs_first_in_the_stack_bentoml_builds(restored: None) -> None:
    admission = Middleware(AdmissionMiddleware, limit=3, paths={"/ping"})
    install_adaptations(edge=[admission])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    first = app.user_middleware[0]
    assert first.cls is AdmissionMiddleware
    assert first.kwargs == {"limit": 3, "paths": {"/ping"}}
    assert len(app.user_middleware) > 1, "BentoML's own layers follow it"


def test_installing_again_replaces_the_edge(restored: None) -> None:
    install_adaptations(edge=[Middleware(AdmissionMiddleware, limit=3, paths={"/ping"})])
    install_adaptations(edge=[])
    app = Tiny.to_asgi()  # type: ignore[attr-defined]
    assert AdmissionMiddleware not in [middleware.cls for middleware in app.user_middleware]
