"""Deadlines on waiting for a store that bound the wait, never the worker's own queueing.

``ReplyDeadline(when)`` is ``asyncio.timeout_at(when)`` with one difference.
When ``when`` passes, the read is not cancelled at once: the event loop first
takes in what has already reached this process's sockets and runs what those
bytes wake, and only a read still waiting after that is cancelled (raising
``TimeoutError``, as ``asyncio.timeout`` does).  So a reply that arrived in
time is used, however late a busy worker got round to it; only a store that
has not answered is abandoned.  The resolver's feature deadline and the Redis
store's read timeout are both of this kind.

How: ``asyncio.timeout`` cancels the task as soon as its timer fires, and a
task whose reply has already woken it (its step queued on a busy loop) is
cancelled all the same.  Here the timer does not cancel: it lets the loop turn
``SETTLE_TURNS`` more times and then cancels, so the cancellation is queued
behind the steps of replies taken in by then.  Two turns also cover a reply
that lands between the loop's poll of its sockets and its timers (under
uvloop, libuv runs timers, then ready callbacks, then the poll, whose
callbacks run on the next turn).  Each turn runs whatever else is ready in the
worker, so a deadline that does pass ends a few turns after ``when``:
microseconds on an idle worker.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["SETTLE_TURNS", "ReplyDeadline"]

SETTLE_TURNS = 2
"""Event-loop turns between the deadline and the cancellation (see the module docstring)."""


class ReplyDeadline:
    """An async context manager: cancel the block at ``when`` (loop time) unless a reply is in."""

    def __init__(self, when: float) -> None:
        self._when = when
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> ReplyDeadline:
        await self._timeout.__aenter__()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_at(self._when, self._settle, SETTLE_TURNS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self._timeout.__aexit__(exc_type, exc, traceback)

    @property
    def when(self) -> float:
        """The deadline, in event-loop time."""
        return self._when

    def expired(self) -> bool:
        """Whether the deadline passed with the block still waiting."""
        return self._timeout.expired()

    def _settle(self, turns: int) -> None:
        assert self._loop is not None
        if turns:
            self._handle = self._loop.call_soon(self._settle, turns - 1)
        else:
            self._handle = None
            # Cancels the block on the loop's next turn, like asyncio.timeout at its deadline.
            self._timeout.reschedule(self._loop.time())
