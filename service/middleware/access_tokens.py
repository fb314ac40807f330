"""Bearer tokens at the edge: writes and operations need one, reads may.

Every HTTP request falls in one of four classes by its path:

- open: ``/readyz``, ``/livez``, ``/healthz``, ``/metrics`` and the API
  description (``/``, ``/docs.json``, ``/static_content/...``), which load
  balancers, scrapers and people reading the docs need without a secret
  (``/metrics`` is a read instead when ``metrics_open`` is false);
- write: ``POST /push``.  Refused with 403 when no write token is configured
  (the body says how to enable writes), else it needs the write token;
- operations: ``/ops/...``.  The write token when one is configured, else
  the rules of a read;
- read: everything else (``/score``, ``/score_batch``, ``/features``, and
  unknown paths, so a new endpoint is never open by mistake).  The read
  token or the write token when a read token is configured, else open.

A request that needs a token and lacks the right one gets 401 with
``WWW-Authenticate: Bearer`` (RFC 6750) before anything else runs, so its
body is never read.  Tokens are compared with ``hmac.compare_digest``, whose
time does not depend on how much of a guess matches.
"""

from __future__ import annotations

import hmac
from enum import Enum

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Access", "BearerTokenMiddleware", "access_of"]

_OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/", "/docs.json"})
_METRICS_PATH = "/metrics"
_OPEN_PREFIXES = ("/static_content/",)
_WRITE_PATHS = frozenset({"/push"})
_OPERATIONS_PREFIX = "/ops/"

_HOW_TO_ENABLE_WRITES = (
    "writes are disabled: start the service with FEATSERVE_WRITE_TOKEN set "
    "and send it as 'Authorization: Bearer <token>'"
)


class Access(Enum):
    """What a path asks of the caller."""

    OPEN = "open"
    READ = "read"
    OPERATIONS = "operations"
    WRITE = "write"


def access_of(path: str, metrics_open: bool = True) -> Access:
    """The access class of a request path (see the module docstring)."""
    if path == _METRICS_PATH:
        return Access.OPEN if metrics_open else Access.READ
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return Access.OPEN
    if path in _WRITE_PATHS:
        return Access.WRITE
    if path.startswith(_OPERATIONS_PREFIX):
        return Access.OPERATIONS
    return Access.READ


class BearerTokenMiddleware:
    """Refuses requests that lack the token their path needs; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        write_token: str | None = None,
        read_token: str | None = None,
        metrics_open: bool = True,
    ) -> None:
        self.app = app
        self._metrics_open = metrics_open
        self._write = write_token.encode() if write_token else None
        self._read = read_token.encode() if read_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = access_of(scope["path"], self._metrics_open)
        if access is Access.OPEN:
            await self.app(scope, receive, send)
            return
        if access is Access.WRITE and self._write is None:
            await JSONResponse({"error": _HOW_TO_ENABLE_WRITES}, status_code=403)(
                scope, receive, send
            )
            return
        needs_write = access is Access.WRITE or (
            access is Access.OPERATIONS and self._write is not None
        )
        accepted = self._accepted_tokens(needs_write)
        if not accepted:
            await self.app(scope, receive, send)
            return
        presented = _bearer_token(scope)
        if presented is not None and any(hmac.compare_digest(presented, t) for t in accepted):
            await self.app(scope, receive, send)
            return
        await _unauthorized(presented is not None, needs_write)(scope, receive, send)

    def _accepted_tokens(self, needs_write: bool) -> tuple[bytes, ...]:
        if needs_write:
            return (self._write,) if self._write is not None else ()
        if self._read is None:
            return ()
        return (self._read, self._write) if self._write is not None else (self._read,)


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return bytes(token.strip())
            return None
    return None


def _unauthorized(presented: bool, needs_write: bool) -> JSONResponse:
    token = "write token" if needs_write else "read token"
    if presented:
        message = f"the bearer token is not the {token}"
        challenge = 'Bearer realm="featserve", error="invalid_token"'
    else:
        message = f"this endpoint needs 'Authorization: Bearer <{token}>'"
        challenge = 'Bearer realm="featserve"'
    return JSONResponse(
        {"error": message}, status_code=401, headers={"WWW-Authenticate": challenge}
    )
