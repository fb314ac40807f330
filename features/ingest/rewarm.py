"""Rewarm: refill Redis from the persistent backing store after a restart or an outage.

Every entity group the backing store holds is scanned and written through
the target's ordinary ``write``, a chunk at a time, each value at the event
time it was held with.  Redis' write scripts skip whatever is older than
what Redis already holds, value by value, so a value pushed since the outage
is never rolled back and a second run changes nothing; the TTL Redis gives
a group counts from its newest event time, as the backing store's does.
Groups whose newest event time is older than their TTL are not written
(expired): Redis would have dropped them, and the backing store no longer
serves them either (``write_rules.is_live`` is the one rule for both).  A group
Redis refuses for its data (a key of another type) is counted as rejected
and the run goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from features.registry import FeatureGroup
from features.stores.backing import BackingStore
from features.stores.base import FeatureUpdate, OnlineStore, WriteOutcome
from features.stores.write_rules import Clock, epoch_ms, is_live

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
    rejected: int
    """Entity groups the target refused for their data (``WriteOutcome.refused``)."""
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
    ``clock`` (epoch seconds) decides which groups have expired (``write_rules.is_live``).
    """
    started = time.perf_counter()
    now_ms = epoch_ms(clock)
    read = expired = 0
    outcomes: Counter[str] = Counter()
    for group in groups:
        for chunk in _chunks(source.scan(group), chunk_size):
            live = [update for update in chunk if is_live(group, update.event_ms, now_ms)]
            for outcome in target.write(live) if live else []:
                outcomes[_kind(outcome)] += 1
            read += len(chunk)
            expired += len(chunk) - len(live)
            on_progress(len(chunk))
    return RewarmReport(
        read,
        outcomes["written"],
        outcomes["stale"],
        expired,
        outcomes["rejected"],
        time.perf_counter() - started,
    )


def _kind(outcome: WriteOutcome) -> str:
    if outcome.refused is not None:
        return "rejected"
    return "written" if outcome.applied else "stale"


def _chunks(updates: Iterator[FeatureUpdate], size: int) -> Iterator[list[FeatureUpdate]]:
    while chunk := list(islice(updates, size)):
        yield chunk
