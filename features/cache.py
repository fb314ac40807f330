"""The in-process cache in front of Redis, and single-flight for its misses.

``FeatureCache`` is a cachetools ``TTLCache`` (LRU within a size bound, each
entry expiring ``ttl_s`` after it was stored) with an injectable timer so
tests move time instead of sleeping.  ``SingleFlight`` lets concurrent
misses for the same key wait on one fetch instead of each asking Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

__all__ = ["FeatureCache", "SingleFlight"]

V = TypeVar("V")


class FeatureCache(Generic[V]):
    """A bounded TTL/LRU cache; with ``ttl_s`` or ``maxsize`` 0 it holds nothing."""

    def __init__(
        self, ttl_s: float, maxsize: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: TTLCache[Hashable, V] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer) if ttl_s > 0 and maxsize > 0 else None
        )

    def get(self, key: Hashable) -> V | None:
        """The live entry for ``key``, or ``None``."""
        if self._entries is None:
            return None
        return self._entries.get(key)

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``; the caller must not mutate it afterwards."""
        if self._entries is not None:
            self._entries[key] = value

    def discard(self, key: Hashable) -> None:
        """Drop the entry for ``key``, if any."""
        if self._entries is not None:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every entry."""
        if self._entries is not None:
            self._entries.clear()

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)


class SingleFlight(Generic[V]):
    """Tracks fetches in progress so a second miss for a key waits for the first."""

    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[V]] = {}

    def join(self, key: Hashable) -> asyncio.Future[V] | None:
        """The fetch already running for ``key``, or ``None`` if the caller should fetch it."""
        return self._in_flight.get(key)

    def lead(self, key: Hashable) -> asyncio.Future[V]:
        """Register the caller as the one fetching ``key``; it must later ``settle`` it."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        return future

    def settle(self, key: Hashable, value: V) -> None:
        """Hand ``value`` to everyone waiting on ``key`` and forget the fetch."""
        future = self._in_flight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def __len__(self) -> int:
        return len(self._in_flight)
