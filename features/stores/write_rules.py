"""The write rules every path follows: event-time merge, TTL expiry, the clock they read.

Redis (the scripts in ``redis_scripts``), the backing stores (``backing``),
the chunk writer and rewarm (``features.ingest``) all decide with these:

- **Merge** (``held_after_write``), value by value by event time, each
  structure its own way (``codecs``, ``StructureCodec.merged``: a hash field
  by field, a blob whole, a sorted set like ``ZADD GT`` keeping the newest
  ``top_n``); an older value never replaces a newer one.

- **Expiry** (``is_live``): a group whose newest event time is older than its
  TTL (``FeatureGroup.ttl``) has expired: live iff ``event_ms + ttl_ms >
  now_ms``, with ``now_ms`` from an injectable clock (``time.time`` unless a
  test pins it).  Redis applies the same rule, ``PEXPIREAT`` the newest event
  time plus the TTL.  An expired group counts as absent, as a key Redis has
  expired: ``held_after_write`` neither merges into it nor skips an update as
  older than it.

Values are held in their normalized Python form (``held.HeldGroup``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta

from features.registry import FeatureGroup
from features.stores.base import FeatureUpdate
from features.stores.codecs import codec_of
from features.stores.held import HeldGroup, Merged

__all__ = [
    "Clock",
    "epoch_ms",
    "expires_at_ms",
    "held_after_write",
    "is_live",
    "oldest_live_ms",
    "unexpired",
]

Clock = Callable[[], float]
"""Now, in epoch seconds: ``time.time``, or a fixed time in tests."""


def epoch_ms(clock: Clock) -> int:
    """``clock``'s time in whole epoch milliseconds.

    Rounded down, which changes no answer of ``is_live``: event times are whole
    milliseconds too.
    """
    return math.floor(clock() * 1000)


def _ttl_ms(group: FeatureGroup) -> int:
    return group.ttl // timedelta(milliseconds=1)


def is_live(group: FeatureGroup, event_ms: int, now_ms: int) -> bool:
    """Whether values of ``group`` as of ``event_ms`` are within its TTL at ``now_ms``.

    The one expiry rule: live iff ``event_ms + ttl_ms > now_ms``.
    """
    return event_ms + _ttl_ms(group) > now_ms


def expires_at_ms(group: FeatureGroup, event_ms: int) -> int:
    """The first time at which ``is_live`` says values of ``group`` as of ``event_ms`` expired."""
    return event_ms + _ttl_ms(group)


def oldest_live_ms(group: FeatureGroup, now_ms: int) -> int:
    """The oldest event time of ``group`` that ``is_live`` accepts at ``now_ms``.

    For a store that checks liveness on the server, in a condition.
    """
    return now_ms - _ttl_ms(group) + 1


def unexpired(group: FeatureGroup, held: HeldGroup | None, now_ms: int) -> HeldGroup | None:
    """``held``, or ``None`` when it has expired: an expired group counts as absent."""
    if held is None or not is_live(group, held.event_ms, now_ms):
        return None
    return held


def held_after_write(held: HeldGroup | None, update: FeatureUpdate, now_ms: int) -> Merged:
    """``update`` merged into ``held`` at ``now_ms``, value by value; see the module docstring.

    An expired ``held`` counts as absent: the update replaces it whole.
    """
    group = update.group
    return codec_of(group).merged(unexpired(group, held, now_ms), update)
