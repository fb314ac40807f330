"""Rewarm: refill Redis from the persistent backing store after a restart or an outage.

Every entity group the backing store holds is scanned and written through
the target's ordinary ``write``, a chunk at a time, at the event time it was
held with.  Redis' write scripts skip whatever is older than what Redis
already holds, so a value pushed since the outage is never rolled back and
a second run changes nothing.  Groups whose event time is older than their
TTL are not written: Redis would have dropped them, a write would give them
a fresh TTL, and the backing store no longer serves them either
(``backing.is_live`` is the one rule for both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from features.registry import FeatureGroup
from features.stores.backing import BackingStore, Clock, epoch_ms, is_live
from features.stores.base import FeatureUpdate, OnlineStore

__all__ = ["RewarmReport", "rewarm"]


@dataclass(frozen=True)
class RewarmReport:
    """What a rewarm read from the backing store and what became of it."""

    read: int
    """Entity groups scanned from the backing store."""
    written: int
    """Entity groups the target applied."""
    stale: int
    """Entity groups skipped because the target held a newer event."""
    expired: int
    """Entity groups not written because their event time is older than the group's TTL."""
    elapsed_s: float


def rewarm(
    source: BackingStore,
    target: OnlineStore,
    groups: Iterable[FeatureGroup],
    chunk_size: int = 1000,
    on_progress: Callable[[int], None] = lambda _: None,
    clock: Clock = time.time,
) -> RewarmReport:
    """Write every entity group of ``groups`` held by ``source`` into ``target``.

    ``on_progress`` gets the number of entity groups read after each chunk;
    ``clock`` (epoch seconds) decides which groups have expired (``backing.is_live``).
    """
    started = time.perf_counter()
    now_ms = epoch_ms(clock)
    read = written = stale = expired = 0
    for group in groups:
        for chunk in _chunks(source.scan(group), chunk_size):
            live = [update for update in chunk if is_live(group, update.event_ms, now_ms)]
            applied = target.write(live) if live else []
            read += len(chunk)
            expired += len(chunk) - len(live)
            written += sum(applied)
            stale += len(applied) - sum(applied)
            on_progress(len(chunk))
    return RewarmReport(read, written, stale, expired, time.perf_counter() - started)


def _chunks(updates: Iterator[FeatureUpdate], size: int) -> Iterator[list[FeatureUpdate]]:
    while chunk := list(islice(updates, size)):
        yield chunk
