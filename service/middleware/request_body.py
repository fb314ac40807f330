"""Request bodies at the edge: JSON only, and never larger than a bound.

``RequestBodyMiddleware`` answers, before the API sees the request:

- 415 when a request with a body (POST, PUT, PATCH) declares a media type
  that is not JSON (``application/json`` or ``application/*+json``).  A
  request without ``Content-Type`` is read as JSON, as BentoML does.
  BentoML would otherwise pick a parser by the header: ``multipart/form-data``
  without a boundary made it fail with a 500;
- 415 when such a request declares a ``Content-Encoding`` (``gzip``,
  ``deflate``, ``br``...) other than ``identity``: bodies are taken
  uncompressed (BentoML would parse the compressed bytes as JSON and answer
  "Invalid JSON"), and a compressed body would escape the size bound;
- 413 when ``Content-Length`` says the body is larger than ``max_bytes``,
  without reading any of it, and also when a body without a length (chunked)
  grows past ``max_bytes`` while it is read: at most ``max_bytes`` plus one
  chunk is ever held;
- 400 when ``Content-Length`` is not a number;
- 408 when the whole body has not arrived within ``read_timeout_s`` of the
  request's start, with ``Connection: close``: a client that sends its body a
  byte at a time holds a connection for that long at most.

A body within the bound is read here and handed on whole; the API reads the
whole body anyway, so this costs one list join.  A client that disconnects
before its body is in gets no answer, and the API never runs.

It runs ahead of admission (``service.middleware.admission``), so a request
holds an in-flight slot only once its body is in: slow senders wait here,
each costing a connection and a timer, never a slot the other clients need.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestBodyMiddleware", "is_json_media_type"]

_log = logging.getLogger(__name__)

_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_MAX_ECHOED_MEDIA_TYPE = 100


def is_json_media_type(content_type: str) -> bool:
    """Whether a ``Content-Type`` value names JSON (parameters such as charset are ignored)."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class _TooLarge(Exception):
    """The body grew past the bound while it was read."""


class RequestBodyMiddleware:
    """Refuses non-JSON, oversized and late bodies; see the module docstring."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = self._header_problem(scope["method"], headers)
        if problem is not None:
            await problem(scope, receive, send)
            return
        if scope["method"] not in _METHODS_WITH_BODY and b"content-length" not in headers:
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.read_timeout_s):
                first = await self._read_bounded(receive)
        except _TooLarge:
            await self._too_large()(scope, receive, send)
            return
        except TimeoutError:
            await self._too_slow()(scope, receive, send)
            return
        if first["type"] != "http.request":
            _log.debug("a client left before its request body was in; nothing answered")
            return
        await self.app(scope, _replaying(first, receive), send)

    def _header_problem(self, method: str, headers: dict[bytes, bytes]) -> JSONResponse | None:
        content_type = headers.get(b"content-type")
        if (
            method in _METHODS_WITH_BODY
            and content_type is not None
            and not is_json_media_type(content_type.decode("latin-1"))
        ):
            shown = content_type.decode("latin-1")[:_MAX_ECHOED_MEDIA_TYPE]
            return JSONResponse(
                {
                    "error": f"Content-Type {shown!r} is not accepted: "
                    "send a JSON body with 'Content-Type: application/json'"
                },
                status_code=415,
            )
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if method in _METHODS_WITH_BODY and encoding not in (b"", b"identity"):
            shown = encoding.decode("latin-1")[:_MAX_ECHOED_MEDIA_TYPE]
            return JSONResponse(
                {
                    "error": f"Content-Encoding {shown!r} is not accepted: send the JSON body "
                    "uncompressed"
                },
                status_code=415,
            )
        length = headers.get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return JSONResponse(
                {"error": "Content-Length: not a number of bytes"},
                status_code=400,
                headers={"Connection": "close"},
            )
        if int(length) > self.max_bytes:
            return self._too_large()
        return None

    async def _read_bounded(self, receive: Receive) -> Message:
        """The whole body as one message, or what ended it early (the client disconnected)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    def _too_large(self) -> JSONResponse:
        # Connection: close, since the rest of the body is never read.
        return JSONResponse(
            {
                "error": f"the request body is larger than {self.max_bytes} bytes "
                "(FEATSERVE_MAX_BODY_BYTES)"
            },
            status_code=413,
            headers={"Connection": "close"},
        )

    def _too_slow(self) -> JSONResponse:
        # Connection: close, since the rest of the body is never read.
        return JSONResponse(
            {
                "error": f"the request body did not arrive within {self.read_timeout_s:g} s "
                "(FEATSERVE_BODY_TIMEOUT_S)"
            },
            status_code=408,
            headers={"Connection": "close"},
        )


def _replaying(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that yields ``first``, then whatever ``receive`` yields."""
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
