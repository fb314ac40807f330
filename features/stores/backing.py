"""What every persistent backing store shares: its contract, its read answer, the async facade.

A backing store (tier 3 of the read path) keeps one record per entity group,
keyed by the Redis key string (``features.keys.feature_key``): the values,
their event times, and the newest of those (``held.HeldGroup``).  It
answers ``read`` exactly as the Redis store does for the same writes
(``read_held``), so the resolver cannot tell them apart, and it merges and
expires by the rules in ``write_rules`` (``held_after_write``, ``is_live``),
the same as the scripts in ``redis_scripts``.  An expired group reads as
absent (``read_held`` says ``None``, so the resolver falls through to stale
values and defaults).  Stores keep expired records until a write replaces
them (or DynamoDB's own TTL deletes them, see ``dynamodb``); ``scan`` yields
them, and ``featserve rewarm`` skips them by the same rule.

Each store encodes ``HeldGroup`` to its own storage form and passes what it
reads back through ``checked_values``, which leaves out (and logs) values the
registry no longer accepts, as the Redis store does.  A record a store cannot
decode at all (``UnreadableRecord``) reads as absent and refuses writes to
its key.

``AsyncBackingStore`` runs a blocking store on worker threads of its own,
so the event loop never waits on disk or on the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from features.errors import StoreUnavailable
from features.registry import FeatureGroup
from features.stores.base import (
    FeatureUpdate,
    ReadRequest,
    StoredRow,
    StoredValues,
    WriteOutcome,
)
from features.stores.codecs import codec_of
from features.stores.held import HeldGroup
from features.stores.write_rules import unexpired
from features.timing import Stage, StageTimer

__all__ = [
    "AsyncBackingStore",
    "BackingStore",
    "UnreadableRecord",
    "checked_values",
    "entity_id_of",
    "read_held",
]

_T = TypeVar("_T")


class UnreadableRecord(ValueError):
    """A stored record that cannot be decoded (not JSON, an event time that is no number, ...)."""


class BackingStore(Protocol):
    """A blocking persistent store: ``OnlineStore``'s contract plus a scan for rewarm."""

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """See ``OnlineStore.read``; an expired group reads as ``None`` (``read_held``)."""
        ...

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``; ``held_after_write`` is the merge rule."""
        ...

    def scan(self, group: FeatureGroup) -> Iterator[FeatureUpdate]:
        """Every entity group of ``group`` held, expired or not, each value at its event time.

        Records that cannot be decoded are logged and left out.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def entity_id_of(key: str, group: FeatureGroup) -> str:
    """The entity id inside ``key``, a ``feature_key`` of ``group``."""
    return key[len(group.entity.key_name) + 2 : -(len(group.name) + 2)]


def read_held(request: ReadRequest, held: HeldGroup | None, now_ms: int) -> StoredRow | None:
    """What the Redis store would return for ``request`` at ``now_ms`` if Redis held ``held``:
    the values and the event time Redis answers beside them (``StructureCodec.held_row``).

    ``None`` when ``held`` is ``None`` or has expired (``is_live``).
    """
    held = unexpired(request.group, held, now_ms)
    return None if held is None else codec_of(request.group).held_row(request, held)


def checked_values(group: FeatureGroup, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Normalized values from a store's decoded record; invalid ones are logged and left out
    (``StructureCodec.checked_values``)."""
    return codec_of(group).checked_values(group, stored)


class AsyncBackingStore:
    """A blocking backing store run on worker threads of its own, for the event loop.

    ``open_store`` runs on a worker thread, so a store whose connection is
    bound to its thread (SQLite) is opened, used and closed on that one
    thread.  When ``max_pending`` calls are already waiting, a call fails at
    once with ``StoreUnavailable`` rather than queue behind them.
    """

    def __init__(
        self, open_store: Callable[[], BackingStore], workers: int = 1, max_pending: int = 64
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backing")
        self._max_pending = max_pending
        self._pending = 0
        try:
            self._store = self._executor.submit(open_store).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """See ``OnlineStore.read``; runs on the store's worker thread, timed here as ``backing``.

        The timer stays on the event loop's thread: a read the deadline abandoned
        may still finish on the worker later, and must not touch the request's
        timer while its response is being built.
        """
        if timer is None:
            return await self._run(self._store.read, requests, None)
        with timer.stage(Stage.BACKING):
            return await self._run(self._store.read, requests, None)

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``; runs on the store's worker thread."""
        return await self._run(self._store.write, updates)

    async def close(self) -> None:
        """Close the store on its thread, then stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
        self._executor.shutdown(wait=True)

    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        if self._pending >= self._max_pending:
            raise StoreUnavailable(f"the backing store has {self._pending} calls waiting already")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
        finally:
            self._pending -= 1
