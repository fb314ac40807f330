"""A request-timeout middleware that cancels its timer, swapped in for BentoML's.

BentoML 1.4.40's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout,
...)`` for every request and never cancels it, so each request leaves a
timer handle and a future in the event loop's heap for the whole traffic
timeout (60 s by default).  Under sustained load that is tens of thousands
of live objects per worker: the heap and RSS grow, and full garbage
collections, which walk them all, stretch p99.  The traffic timeout cannot
be switched off by configuration (BentoML's schema requires it to be
positive), so ``service.bentoml_adapter`` replaces the class BentoML looks
up when it builds its middleware stack with ``CancellingTimeoutMiddleware``, which
behaves the same (504 with a JSON error after the timeout) but cancels its
timer as soon as the request is done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CancellingTimeoutMiddleware"]


class CancellingTimeoutMiddleware:
    """Answers 504 when the app has not started its response within ``timeout`` seconds."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, started)

        async def send_and_mark_started(message: Any) -> None:
            _mark_started(started)
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, send_and_mark_started))
        # An app that fails before sending anything also ends the wait.
        request.add_done_callback(lambda _: _mark_started(started))
        try:
            await started
        except TimeoutError:
            if request.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
                return
        except asyncio.CancelledError:
            request.cancel()
            raise
        finally:
            timer.cancel()
        await request


def _mark_started(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


def _expire(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_exception(TimeoutError())
