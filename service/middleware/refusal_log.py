"""One log line per refused request, rate-limited, with nothing a client wrote in it.

A client's mistake is the client's business: the server log needs to know
that it happened, how often, and where (status, route, the fields named),
never the input itself (it may carry personal data, or text written to
mislead whoever reads the log) and never a traceback (2 KB per bad request
let anyone fill a disk).  ``RefusalLogMiddleware`` watches every answer:
a 4xx or a 503 is written as one line at INFO on the ``featserve.refusals``
logger, e.g.::

    refused 400 POST /score: entity_id, amount

The route is one of the service's own (``other`` for any other path); field
names come from the error's structure (pydantic's ``loc``, ``/push``'s
``refused`` list), an unknown key shows as ``<unknown key>``, and a field name
that is not a plain identifier as ``?``.  Repeats are rate-limited by
``RefusalLog``: per status and route, at most one line per quiet period,
the next one saying how many were held back.  Server faults (5xx other than
503) are not refusals: they stay at ERROR with their traceback, where they
are logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware.route_labels import route_label

__all__ = ["REFUSAL_LOGGER", "RefusalLog", "RefusalLogMiddleware", "refused_fields"]

REFUSAL_LOGGER = "featserve.refusals"
"""The logger refusals are written to, at INFO."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_HELD_BODY = 64 << 10
_FIELD_OF_EDGE_REFUSAL = {
    401: "Authorization",
    403: "Authorization",
    404: "path",
    405: "method",
    408: "body",
    413: "body",
    415: "Content-Type",
    431: "headers",
    503: "load",
}


def refused_fields(status: int, body: bytes) -> list[str]:
    """The fields a refusal's JSON body names, safe to log (see the module docstring)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    fields: list[str] = []
    if isinstance(answer, dict):
        for problem in answer.get("detail") or []:
            if isinstance(problem, dict):
                fields.append(_field_of(problem))
        for refusal in answer.get("refused") or []:
            if isinstance(refusal, dict):
                fields.append(f"updates.{refusal.get('index')}.{_safe(refusal.get('field'))}")
    if not fields:
        fields.append(_FIELD_OF_EDGE_REFUSAL.get(status, "body"))
    return list(dict.fromkeys(fields))


def _field_of(problem: dict[str, Any]) -> str:
    location = [_safe(part) for part in problem.get("loc") or () if part != "body"]
    if problem.get("type") == "extra_forbidden" and location:
        location[-1] = "<unknown key>"
    return ".".join(location) or "body"


def _safe(part: object) -> str:
    if isinstance(part, int):
        return str(part)
    if isinstance(part, str) and _IDENTIFIER.fullmatch(part):
        return part
    return "?"


class RefusalLog:
    """Writes refusals to ``logger`` at INFO, at most one line per (status, route) per
    ``quiet_period_s``; a line after a quiet period says how many were held back."""

    def __init__(
        self,
        logger: logging.Logger,
        quiet_period_s: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._quiet_period_s = quiet_period_s
        self._timer = timer
        self._last_logged: dict[tuple[int, str], float] = {}
        self._held_back: dict[tuple[int, str], int] = {}

    def refused(self, status: int, method: str, route: str, fields: Collection[str]) -> bool:
        """Log one refusal unless its kind was logged within the quiet period; whether it was."""
        key = (status, route)
        now = self._timer()
        last = self._last_logged.get(key)
        if last is not None and now - last < self._quiet_period_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return False
        held = self._held_back.pop(key, 0)
        more = f" ({held} more like it held back since the last line)" if held else ""
        self._logger.info("refused %d %s %s: %s%s", status, method, route, ", ".join(fields), more)
        self._last_logged[key] = now
        return True


class RefusalLogMiddleware:
    """Logs each 4xx and 503 answer through a ``RefusalLog``; see the module docstring.

    ``routes``: the paths that appear in a line as themselves (any other is ``other``).
    """

    def __init__(self, app: ASGIApp, routes: Collection[str], log: RefusalLog) -> None:
        self.app = app
        self._routes = frozenset(routes)
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        held: list[bytes] = []
        size = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status, size
            await send(message)
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and _is_refusal(status):
                chunk = message.get("body", b"")
                if size + len(chunk) <= _MAX_HELD_BODY:
                    held.append(chunk)
                size += len(chunk)
                if not message.get("more_body", False):
                    self._log.refused(
                        status,
                        scope["method"] if scope["method"] in _METHODS else "OTHER",
                        route_label(scope["path"], self._routes),
                        refused_fields(status, b"".join(held)),
                    )

        await self.app(scope, receive, send_and_watch)


def _is_refusal(status: int) -> bool:
    return 400 <= status < 500 or status == 503
