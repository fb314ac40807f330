"""Which paths need which token (the middleware itself is exercised over HTTP in tests/e2e)."""

from __future__ import annotations

import pytest

from service.middleware.access_tokens import Access, access_of
from service.middleware.request_body import is_json_media_type


@pytest.mark.parametrize(
    ("path", "access"),
    [
        ("/readyz", Access.OPEN),
        ("/livez", Access.OPEN),
        ("/metrics", Access.OPEN),
        ("/docs.json", Access.OPEN),
        ("/push", Access.WRITE),
        ("/ops/status", Access.OPERATIONS),
        ("/score", Access.READ),
        ("/score_batch", Access.READ),
        ("/features", Access.READ),
        ("/something-new", Access.READ),
        ("/metrics/../push", Access.READ),
    ],
)
def test_each_path_has_its_access_class(path: str, access: Access) -> None:
    assert access_of(path) is access


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/problem+json", True),
        ("text/plain", False),
        ("multipart/form-data; boundary=x", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonp", False),
        ("", False),
    ],
)
def test_json_media_types(content_type: str, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json


def test_metrics_is_a_read_when_it_is_not_open() -> None:
    assert access_of("/metrics", metrics_open=False) is Access.READ
    assert access_of("/readyz", metrics_open=False) is Access.OPEN
