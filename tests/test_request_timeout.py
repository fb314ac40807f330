"""The replacement request-timeout middleware, driven as a plain ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bentoml._internal.server.http import traffic

from service.middleware.request_timeout import CancellingTimeoutMiddleware

ORIGINAL = traffic.TimeoutMiddleware

Message = dict[str, Any]


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(middleware: Any) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware({"type": "http", "path": "/", "headers": []}, receive, send)
    return sent


def live_timers() -> int:
    loop = asyncio.get_running_loop()
    scheduled = loop._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled())


@pytest.mark.parametrize(
    ("middleware_class", "left_behind"), [(ORIGINAL, 50), (CancellingTimeoutMiddleware, 0)]
)
def test_finished_requests_leave_no_live_timer(middleware_class: Any, left_behind: int) -> None:
    """BentoML's own middleware leaves one timer per request; ours leaves none."""

    async def scenario() -> int:
        middleware = middleware_class(ok_app, timeout=60.0)
        for _ in range(50):
            assert (await call(middleware))[0]["status"] == 200
        return live_timers()

    assert asyncio.run(scenario()) == left_behind


def test_a_request_past_the_timeout_gets_504_and_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def stuck_app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> list[Message]:
        sent = await call(CancellingTimeoutMiddleware(stuck_app, timeout=0.01))
        await asyncio.wait_for(cancelled.wait(), 5)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.01 seconds" in sent[1]["body"]


def test_an_app_that_fails_before_answering_fails_at_once() -> None:
    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        middleware = CancellingTimeoutMiddleware(failing_app, timeout=600.0)
        await asyncio.wait_for(call(middleware), 5)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario())
