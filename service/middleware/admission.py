"""Admission control: a bound on the requests one worker serves at once, the rest refused soon.

A worker that takes every request queues them all on its one event loop: at
64 connections each request waits behind the other 63, and its answer comes
late for the caller's latency budget.  ``AdmissionMiddleware`` counts the
requests to the guarded paths (the service's API) that are in flight in this
worker; beyond ``limit`` a request waits, in arrival order, up to ``wait_s``
for a slot to free, and is answered with 503, a ``Retry-After`` header and a
JSON error when none does, before any of its work starts.
Other paths (``/metrics``, ``/readyz``, ``/ops/status``) are never refused,
so an overloaded worker can still be watched.

``service.bentoml_adapter`` puts it ahead of BentoML's tracing and
request-timeout layers, right after the token and body checks (so a request
counts only once its whole body is in: a slow sender never holds a slot).
Where ``add_asgi_middleware`` puts a middleware (after BentoML's layers), a
request has already cost a good part of a ``/score`` and waited two turns of
a busy event loop (the timeout layer runs the rest in a task of its own)
before it is counted, so few were refused and the answers' latency grew with
the connections all the same; counted early, a refusal costs little
(docs/benchmarks.md has both).  BentoML's traffic metrics, which come first,
count its refusals (``http_response_code="503"``), and
``featserve_overload_refusals_total`` counts them by path.

Why wait before refusing: a refusal is cheap (about a twentieth of an
answer) but not free, and a client that retries at once sends the next
request as soon as the 503 is in: at 64 connections such clients sent
thousands of refusals a second, which together took a fifth to a quarter of
the worker (docs/benchmarks.md), and a client that honours ``Retry-After``
left its slot idle for a second. Waiting, a request usually gets a slot (one
frees every answer), and each refused connection sends at most one request
per ``wait_s``; a refusal is also held back until ``hold_s`` after the
request came, which bounds that to one per ``hold_s`` (a client that honours
``Retry-After`` waits longer anyway). Waiting holds no slot, no body reading and no Redis
connection: a future and a timer. A slot freed is handed to the oldest waiter
directly, so a request arriving meanwhile cannot take it first.

Why not BentoML's ``traffic.max_concurrency``: it answers 429 without
``Retry-After``, which a client needs to back off rather than retry at once,
it sits after the same layers, and it would refuse ``/ops/status`` too (it
lets through only BentoML's own health and metrics paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import observe_refusal

__all__ = ["RETRY_AFTER_S", "AdmissionMiddleware"]

RETRY_AFTER_S = 1
"""What ``Retry-After`` asks of a refused client, in whole seconds as HTTP wants."""


class AdmissionMiddleware:
    """Serves at most ``limit`` requests to ``paths`` at once here; another waits up to
    ``wait_s`` for a slot, then is refused with 503, no sooner than ``hold_s`` after it came.

    ``limit`` 0 admits everything; ``wait_s`` 0 refuses without waiting for a slot.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        paths: Collection[str],
        wait_s: float = 0.0,
        hold_s: float = 0.0,
    ) -> None:
        self.app = app
        self._limit = limit
        self._paths = frozenset(paths)
        self._wait_s = wait_s
        self._hold_s = hold_s
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._refusal = json.dumps(
            {
                "error": f"overloaded: this worker is serving {limit} requests already; "
                f"retry after {RETRY_AFTER_S} s"
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._limit or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        if self._in_flight < self._limit:
            self._in_flight += 1
        elif not await self._slot_in_time():
            observe_refusal(scope["path"])
            if self._hold_s > self._wait_s:
                await asyncio.sleep(self._hold_s - max(self._wait_s, 0.0))
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _slot_in_time(self) -> bool:
        """Wait up to ``wait_s`` for a slot handed over by ``_release``: whether one came."""
        if self._wait_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self._wait_s, self._expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The client went away: a slot handed over meanwhile goes to the next waiter.
            if waiter.cancelled():
                with contextlib.suppress(ValueError):  # unless _release dropped it already
                    self._waiters.remove(waiter)
            elif waiter.result():
                self._release()
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        """No slot came in time: the waiter leaves the line, refused."""
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_result(False)

    def _release(self) -> None:
        """Hand this slot to the oldest request still waiting, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled one leaves the line when its task resumes
                waiter.set_result(True)
                return
        self._in_flight -= 1

    async def _refuse(self, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._refusal)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self._refusal})
