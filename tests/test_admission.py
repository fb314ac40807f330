"""The admission middleware, driven as a plain ASGI app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from service.middleware.admission import AdmissionMiddleware

Message = dict[str, Any]


class HeldApp:
    """Answers 200 once ``release`` is set; counts the requests it has started."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "headers": []}, receive, send)
    return sent


def test_beyond_the_limit_requests_are_refused_at_once_with_retry_after() -> None:
    async def scenario() -> tuple[list[Message], list[list[Message]], int]:
        held = HeldApp()
        middleware = AdmissionMiddleware(held, limit=2, paths={"/score"})
        admitted = [asyncio.create_task(call(middleware, "/score")) for _ in range(2)]
        await asyncio.sleep(0)
        refused = await call(middleware, "/score")  # returns while the others are held
        held.release.set()
        answered = await asyncio.gather(*admitted)
        return refused, answered, held.started

    refused, answered, started = asyncio.run(scenario())
    start, body = refused
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert "overloaded" in json.loads(body["body"])["error"]
    assert [messages[0]["status"] for messages in answered] == [200, 200]
    assert started == 2


def test_finished_requests_make_room_and_other_paths_are_never_refused() -> None:
    async def scenario() -> list[int]:
        held = HeldApp()
        middleware = AdmissionMiddleware(held, limit=1, paths={"/score"})
        first = asyncio.create_task(call(middleware, "/score"))
        await asyncio.sleep(0)
        status = asyncio.create_task(call(middleware, "/ops/status"))
        await asyncio.sleep(0)
        held.release.set()
        await first
        after = await call(middleware, "/score")
        return [(await status)[0]["status"], (await first)[0]["status"], after[0]["status"]]

    assert asyncio.run(scenario()) == [200, 200, 200]


def test_a_limit_of_zero_admits_everything() -> None:
    async def scenario() -> list[int]:
        held = HeldApp()
        middleware = AdmissionMiddleware(held, limit=0, paths={"/score"})
        calls = [asyncio.create_task(call(middleware, "/score")) for _ in range(50)]
        await asyncio.sleep(0)
        held.release.set()
        return [messages[0]["status"] for messages in await asyncio.gather(*calls)]

    assert asyncio.run(scenario()) == [200] * 50


class OrderedApp:
    """Answers each request once its ``release`` is called; records who started, in order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        name = scope["name"]
        self.started.append(name)
        await self.gates.setdefault(name, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def release(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()


async def named_call(app: Any, name: str) -> int:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "path": "/score", "headers": [], "name": name}, receive, send)
    return int(sent[0]["status"])


async def settled() -> None:
    """Let every ready task run until each waits on something."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_request_beyond_the_limit_waits_and_gets_the_freed_slot_in_arrival_order() -> None:
    async def scenario() -> tuple[list[int], list[str]]:
        app = OrderedApp()
        middleware = AdmissionMiddleware(app, limit=1, paths={"/score"}, wait_s=3600.0)
        calls = []
        for name in ("a", "b", "c"):
            calls.append(asyncio.create_task(named_call(middleware, name)))
            await settled()
        assert app.started == ["a"]
        app.release("a")
        await settled()
        assert app.started == ["a", "b"]
        app.release("b")
        app.release("c")
        return list(await asyncio.gather(*calls)), app.started

    statuses, started = asyncio.run(scenario())
    assert statuses == [200, 200, 200]
    assert started == ["a", "b", "c"]


def test_a_request_that_gets_no_slot_within_the_wait_is_refused() -> None:
    async def scenario() -> tuple[int, int]:
        app = OrderedApp()
        middleware = AdmissionMiddleware(app, limit=1, paths={"/score"}, wait_s=0.001)
        first = asyncio.create_task(named_call(middleware, "a"))
        await settled()
        refused = await named_call(middleware, "b")  # "a" is held throughout
        app.release("a")
        return refused, await first

    assert asyncio.run(scenario()) == (503, 200)


def test_a_waiter_whose_client_left_passes_the_slot_on() -> None:
    async def scenario() -> tuple[list[str], int]:
        app = OrderedApp()
        middleware = AdmissionMiddleware(app, limit=1, paths={"/score"}, wait_s=3600.0)
        first = asyncio.create_task(named_call(middleware, "a"))
        await settled()
        gone = asyncio.create_task(named_call(middleware, "b"))
        await settled()
        third = asyncio.create_task(named_call(middleware, "c"))
        await settled()
        gone.cancel()
        app.release("a")
        app.release("c")
        await first
        return app.started, await third

    started, status = asyncio.run(scenario())
    assert started == ["a", "c"]
    assert status == 200


def test_a_refusal_is_held_back_until_the_hold_is_over() -> None:
    async def scenario() -> tuple[list[Message], int]:
        app = OrderedApp()
        middleware = AdmissionMiddleware(app, limit=1, paths={"/score"}, hold_s=3600.0)
        first = asyncio.create_task(named_call(middleware, "a"))
        await settled()
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/score", "headers": [], "name": "b"}
        refused = asyncio.create_task(middleware(scope, receive, send))
        await settled()
        held = list(sent)
        refused.cancel()
        app.release("a")
        return held, await first

    held, status = asyncio.run(scenario())
    assert held == []
    assert status == 200
