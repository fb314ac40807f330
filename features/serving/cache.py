"""The in-process cache in front of Redis, and single-flight for its misses.

``FeatureCache`` keeps two cachetools ``LRUCache``s of ``(value, stored_at)``
with an injectable timer, so tests move time instead of sleeping: fresh
entries (served for ``ttl_s`` after they were stored) and last known values
for stale-on-error.  ``SingleFlight`` lets concurrent misses for the same
key wait on one fetch instead of each asking Redis.

Why not cachetools' ``TTLCache`` for the fresh entries: it links its entries
through one Python object each, which the garbage collector tracks, and a
full collection walks them all: with the default sizes, a pause several times
longer than with ``LRUCache`` that every request in flight waits for
(docs/benchmarks.md, "What was changed").  An entry here expires
when it is next looked up, and the LRU bound keeps the size.  Store values
the collector need not track (tuples of numbers and strings) to keep it so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

__all__ = ["FeatureCache", "SingleFlight"]

V = TypeVar("V")


class FeatureCache(Generic[V]):
    """A bounded TTL/LRU cache, plus the last known value of each key for stale-on-error.

    Fresh entries live ``ttl_s``; ``ttl_s`` or ``maxsize`` 0 turns them off.
    Separately, up to ``stale_maxsize`` keys keep their last stored value
    and its time (LRU, no expiry), served only when every store fails.
    """

    def __init__(
        self,
        ttl_s: float,
        maxsize: int,
        stale_maxsize: int = 0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timer = timer
        self._ttl_s = ttl_s
        self._fresh: LRUCache[Hashable, tuple[V, float]] | None = (
            LRUCache(maxsize=maxsize) if ttl_s > 0 and maxsize > 0 else None
        )
        self._last_known: LRUCache[Hashable, tuple[V, float]] | None = (
            LRUCache(maxsize=stale_maxsize) if stale_maxsize > 0 else None
        )

    def get(self, key: Hashable) -> V | None:
        """The live entry for ``key``, or ``None``."""
        if self._fresh is None:
            return None
        entry = self._fresh.get(key)
        if entry is None:
            return None
        if self._timer() - entry[1] < self._ttl_s:
            return entry[0]
        del self._fresh[key]
        return None

    def get_stale(self, key: Hashable) -> tuple[V, float] | None:
        """The last value stored for ``key`` and its age in seconds, however old, or ``None``."""
        if self._last_known is None:
            return None
        known = self._last_known.get(key)
        if known is None:
            return None
        value, stored_at = known
        return value, self._timer() - stored_at

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``; the caller must not mutate it afterwards."""
        entry = (value, self._timer())
        if self._fresh is not None:
            self._fresh[key] = entry
        if self._last_known is not None:
            self._last_known[key] = entry

    def discard(self, key: Hashable) -> None:
        """Drop ``key``, fresh and last known."""
        if self._fresh is not None:
            self._fresh.pop(key, None)
        if self._last_known is not None:
            self._last_known.pop(key, None)

    def __len__(self) -> int:
        """Fresh entries held, counting expired ones not yet looked up."""
        return 0 if self._fresh is None else len(self._fresh)


class SingleFlight(Generic[V]):
    """Tracks fetches in progress so a second miss for a key waits for the first.

    A fetch gets its future only when a second caller joins it: most misses
    have no company, and a future per key costs a microsecond each.
    """

    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[V] | None] = {}

    def join(self, key: Hashable) -> asyncio.Future[V] | None:
        """The fetch already running for ``key``, or ``None`` if the caller should fetch it."""
        if key not in self._in_flight:
            return None
        future = self._in_flight[key]
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._in_flight[key] = future
        return future

    def lead(self, key: Hashable) -> None:
        """Register the caller as the one fetching ``key``; it must later ``settle`` it."""
        self._in_flight[key] = None

    def settle(self, key: Hashable, value: V) -> None:
        """Hand ``value`` to everyone waiting on ``key`` and forget the fetch."""
        future = self._in_flight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def __len__(self) -> int:
        return len(self._in_flight)
