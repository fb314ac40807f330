"""Refusals in the log: one line each, rate-limited, with no piece of the input."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from service.middleware.refusal_log import RefusalLog, RefusalLogMiddleware, refused_fields

LOGGER = "tests.refusals"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def validation_body(*problems: dict[str, Any]) -> bytes:
    return json.dumps({"error": "...", "detail": list(problems)}).encode()


@pytest.mark.parametrize(
    ("status", "body", "fields"),
    [
        (
            400,
            validation_body(
                {"loc": ["body", "entity_id"], "type": "value_error", "msg": "'café x' holds"},
                {"loc": ["body", "amount"], "type": "float_type", "msg": "..."},
            ),
            ["entity_id", "amount"],
        ),
        (
            400,
            validation_body({"loc": ["body", "requests", 3, "amount"], "type": "missing"}),
            ["requests.3.amount"],
        ),
        (
            400,
            validation_body({"loc": ["body", "SECRETKEY"], "type": "extra_forbidden"}),
            ["<unknown key>"],
        ),
        (
            400,
            validation_body({"loc": ["body", "values", "caf\u00e9\n[ERROR] forged"], "type": "x"}),
            ["values.?"],
        ),
        (
            422,
            json.dumps({"refused": [{"index": 1, "field": "tx_count_1h", "error": "x"}]}).encode(),
            ["updates.1.tx_count_1h"],
        ),
        (401, b'{"error": "the bearer token is not the write token"}', ["Authorization"]),
        (415, b'{"error": "Content-Type \'text/plain\' is not accepted"}', ["Content-Type"]),
        (408, b"{}", ["body"]),
        (503, b"not json", ["load"]),
    ],
)
def test_the_fields_logged_name_where_and_never_what(
    status: int, body: bytes, fields: list[str]
) -> None:
    assert refused_fields(status, body) == fields


def test_repeats_are_held_back_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RefusalLog(logging.getLogger(LOGGER), quiet_period_s=10.0, timer=clock)
    with caplog.at_level(logging.INFO, LOGGER):
        assert log.refused(400, "POST", "/score", ["entity_id"])
        for _ in range(99):
            clock.now += 0.01
            assert not log.refused(400, "POST", "/score", ["entity_id"])
        assert log.refused(401, "POST", "/score", ["Authorization"]), "another kind is its own"
        clock.now += 10.0
        assert log.refused(400, "POST", "/score", ["amount"])
    assert [record.getMessage() for record in caplog.records] == [
        "refused 400 POST /score: entity_id",
        "refused 401 POST /score: Authorization",
        "refused 400 POST /score: amount (99 more like it held back since the last line)",
    ]
    assert all(record.levelno == logging.INFO for record in caplog.records)
    assert all(record.exc_info is None for record in caplog.records)


def answering(status: int, body: bytes) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def serve(app: Any, path: str, method: str = "POST") -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    scope = {"type": "http", "path": path, "method": method, "headers": []}
    asyncio.run(app(scope, receive, send))


@pytest.mark.parametrize(
    ("status", "logged"),
    [(200, False), (404, True), (400, True), (503, True), (500, False), (504, False)],
)
def test_the_middleware_logs_refusals_only(
    caplog: pytest.LogCaptureFixture, status: int, logged: bool
) -> None:
    log = RefusalLog(logging.getLogger(LOGGER))
    middleware = RefusalLogMiddleware(answering(status, b"{}"), routes={"/score"}, log=log)
    with caplog.at_level(logging.INFO, LOGGER):
        serve(middleware, "/score")
    assert len(caplog.records) == (1 if logged else 0)


def test_a_path_outside_the_routes_is_logged_as_other(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(logging.getLogger(LOGGER))
    middleware = RefusalLogMiddleware(answering(404, b"{}"), routes={"/score"}, log=log)
    with caplog.at_level(logging.INFO, LOGGER):
        serve(middleware, "/user/alice@example.com/SECRET", method="BREW")
    assert [record.getMessage() for record in caplog.records] == ["refused 404 OTHER other: path"]
