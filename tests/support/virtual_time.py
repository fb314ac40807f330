"""An event loop on virtual time, and a store that never answers, for exact tests of waiting.

``VirtualTimeLoop``'s clock stands still while callbacks run and jumps ahead by
whatever the loop would sleep, so timers fire at exactly their time and a
test reads exact durations, however busy the machine.  It does no I/O wait:
only code that waits on timers and futures runs on it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Sequence
from typing import Any

from features.stores.base import ReadAnswer, ReadRequest
from features.timing import StageTimer

__all__ = ["PromptStore", "SilentStore", "VirtualTimeLoop"]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the loop would sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Waits for nothing: moves the loop's clock by the timeout instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise AssertionError("the loop would wait for ever: nothing is scheduled")
        self._loop.now += timeout
        return super().select(0)


class SilentStore:
    """A store that never answers (a hung socket); records when it was asked and given up on."""

    def __init__(self) -> None:
        self.reads = 0
        self.asked_at: float | None = None
        self.abandoned_at: float | None = None

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        loop = asyncio.get_running_loop()
        self.reads += 1
        self.asked_at = loop.time()
        try:
            await loop.create_future()
        finally:
            self.abandoned_at = loop.time()
        raise AssertionError("unreachable")

    async def write(self, updates: Sequence[Any]) -> list[Any]:
        raise NotImplementedError


class PromptStore:
    """A store that answers every request at once, with the same values; counts its reads."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.reads = 0

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        self.reads += 1
        return [dict(self.values) for _ in requests]

    async def write(self, updates: Sequence[Any]) -> list[Any]:
        raise NotImplementedError
