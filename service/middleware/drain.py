"""Draining a worker on SIGTERM: unready at once, still answering, every connection closed.

When ``bentoml serve`` gets SIGTERM (Kubernetes deleting the pod, a shell's
``kill``), each worker gets it too. Stopping at once would close the
keep-alive connections that clients are about to send on, and a request sent
just then is reset (the client cannot tell whether a ``/push`` was applied).
So a worker drains first, for ``FEATSERVE_DRAIN_S``: ``/readyz`` answers 503
from the signal on, so a load balancer stops sending; every answer carries
``Connection: close``, so no client keeps a connection the worker will close;
and only when the drain ends does the HTTP server stop accepting and shut
down as usual (finishing the requests in flight). ``service.bentoml_adapter``
makes uvicorn's server wait for the drain; this module holds its state and
the middleware that closes connections.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DRAIN", "Drain", "DrainMiddleware"]


@dataclass
class Drain:
    """Whether this worker drains, and since when (``time.monotonic``)."""

    began_at: float | None = None

    @property
    def draining(self) -> bool:
        """Whether a SIGTERM arrived."""
        return self.began_at is not None

    def begin(self) -> None:
        """Start draining, once."""
        if self.began_at is None:
            self.began_at = time.monotonic()

    def over(self, drain_s: float) -> bool:
        """Whether draining began ``drain_s`` or more ago."""
        return self.began_at is not None and time.monotonic() - self.began_at >= drain_s


DRAIN = Drain()
"""This worker's drain: one per process, as there is one HTTP server per process."""


class DrainMiddleware:
    """Adds ``Connection: close`` to every answer while ``drain`` is draining."""

    def __init__(self, app: ASGIApp, drain: Drain = DRAIN) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)
