"""One shape for every client error: ``{"error": "<field>: <problem>", "detail": [...]}``.

BentoML answers a request that fails validation with 400 and
``{"error": "1 validation error for Input", "detail": [...]}``: the field
and the problem are only in ``detail``.  Its own exceptions come back as a
one-element JSON list.  ``ClientErrorMiddleware`` rewrites 4xx JSON bodies
so ``error`` names each field and problem; other responses pass through
untouched and unbuffered.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ClientErrorMiddleware", "describe_client_error"]


def describe_client_error(body: Any) -> dict[str, Any]:
    """The ``{"error", "detail"}`` body for what BentoML or our API returned."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        return {"error": str(body)}
    detail = body.get("detail")
    if not isinstance(detail, list) or not detail:
        return body
    problems = []
    for item in detail:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        problems.append(f"{location or 'body'}: {item.get('msg', 'invalid')}")
    return {"error": "; ".join(problems), "detail": detail}


class ClientErrorMiddleware:
    """Rewrites the JSON body of 4xx responses with ``describe_client_error``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: Message | None = None
        chunks: list[bytes] = []

        async def send_rewriting_client_errors(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500:
                    held_start = message
                    return
            elif held_start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                await _send_rewritten(send, held_start, b"".join(chunks))
                return
            await send(message)

        await self.app(scope, receive, send_rewriting_client_errors)


async def _send_rewritten(send: Send, start: Message, raw: bytes) -> None:
    try:
        body = json.dumps(describe_client_error(json.loads(raw))).encode()
    except ValueError:
        body = raw
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})
