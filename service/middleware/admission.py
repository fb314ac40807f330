"""Admission control: a bound on the requests one worker serves at once, the rest refused at once.

A worker that takes every request queues them all on its one event loop: at
64 connections each request waits behind the other 63, and its answer comes
late for the caller's latency budget.  ``AdmissionMiddleware`` counts the
requests to the guarded paths (the service's API) that are in flight in this
worker; beyond ``limit`` a request is answered at once with 503, a
``Retry-After`` header and a JSON error, before any of its work starts.
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

Why not BentoML's ``traffic.max_concurrency``: it answers 429 without
``Retry-After``, which a client needs to back off rather than retry at once,
it sits after the same layers, and it would refuse ``/ops/status`` too (it
lets through only BentoML's own health and metrics paths).
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import observe_refusal

__all__ = ["RETRY_AFTER_S", "AdmissionMiddleware"]

RETRY_AFTER_S = 1
"""What ``Retry-After`` asks of a refused client, in whole seconds as HTTP wants."""


class AdmissionMiddleware:
    """Refuses requests to ``paths`` with 503 while ``limit`` of them are in flight here.

    ``limit`` 0 admits everything.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: Collection[str]) -> None:
        self.app = app
        self._limit = limit
        self._paths = frozenset(paths)
        self._in_flight = 0
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
        if self._in_flight >= self._limit:
            observe_refusal(scope["path"])
            await self._refuse(send)
            return
        self._in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1

    async def _refuse(self, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._refusal)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self._refusal})
