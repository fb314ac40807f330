"""Failover drills: kill a primary while requests flow; see who fell back, and for how long.

``run_failover`` kills a primary under a running ``Load``'s ``/score``
load, polls the topology until it reports the promotion, and watches the
answers until the entities the lost primary held have been read from Redis
again for ``settle_s`` (with ``strict``, ``settle_s`` without a single
answer from elsewhere; or until ``timeout_s``).  The result says when the
promotion came, when answers came from Redis again, which statuses and
sources the requests got, and whether entities of other shards fell back.
Tests assert on it; ``bench/failover.py`` writes its figures to
``docs/reliability.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from features.sources import Source
from service.harness.fault_drill import Answer, Load

__all__ = ["FailoverResult", "run_failover"]


@dataclass(frozen=True)
class FailoverResult:
    """What a failover drill saw, from the requests' side; times are from the kill."""

    killed_at: float
    """``time.monotonic()`` at the kill."""
    promoted_after_s: float | None
    """When the topology (cluster or sentinels) first named a new primary; None: never."""
    first_redis_after_s: float | None
    """When a request for the lost primary's entities was first answered from Redis again;
    None: never."""
    back_on_redis_after_s: float | None
    """When the lost primary's entities were last answered other than from Redis (0 when
    never), if Redis answered them after that; None otherwise."""
    observed_s: float
    """How long after the kill the drill watched."""
    before: Sequence[Answer]
    """Requests sent before the kill."""
    after: Sequence[Answer]
    """Requests sent from the kill on."""
    affected: frozenset[str] | None
    """The lost primary's entities; None: every entity (a single-shard setup)."""

    def is_affected(self, sample: Answer) -> bool:
        """Whether ``sample`` scored an entity of the lost primary."""
        return self.affected is None or sample.entity_id in self.affected

    @property
    def refused(self) -> list[Answer]:
        """Answers that are neither a 200 nor a 503 with ``Retry-After`` (or no answer)."""
        return [
            s
            for s in (*self.before, *self.after)
            if not (s.status == 200 or (s.status == 503 and s.retry_after))
        ]

    @property
    def sources_affected(self) -> Counter[str]:
        """Sources of the lost primary's entities, from the kill until back on Redis."""
        end = self.back_on_redis_after_s
        return Counter(
            s.source or f"status {s.status}"
            for s in self.after
            if self.is_affected(s) and (end is None or s.sent_at - self.killed_at <= end)
        )

    @property
    def sources_recovered(self) -> Counter[str]:
        """Sources of every entity once Redis answered the lost primary's entities again."""
        if self.first_redis_after_s is None:
            return Counter()
        since = self.killed_at + self.first_redis_after_s
        return Counter(s.source or f"status {s.status}" for s in self.after if s.sent_at >= since)

    @property
    def sources_unaffected(self) -> Counter[str]:
        """Sources of the other shards' entities, from the kill on."""
        return Counter(
            s.source or f"status {s.status}" for s in self.after if not self.is_affected(s)
        )


def run_failover(
    driver: Load,
    kill: Callable[[], None],
    promoted: Callable[[], bool],
    affected: Collection[str] | None = None,
    before_s: float = 2.0,
    settle_s: float = 3.0,
    timeout_s: float = 25.0,
    strict: bool = True,
) -> FailoverResult:
    """Kill a primary under ``driver``'s load and watch until its entities are back on Redis.

    ``promoted`` says whether a new primary serves the lost one's data now;
    ``affected`` are the entities it held (None: all of them).  With ``strict``
    the watch ends ``settle_s`` after the last answer not from Redis; otherwise
    ``settle_s`` after the first from Redis (a deadline short for a busy machine
    sends the odd request to a fallback whatever the topology).
    """
    started = time.monotonic()
    # The load runs on its own: this is the length of the healthy phase, not a wait for it.
    time.sleep(before_s)
    killed_at = time.monotonic()
    kill()
    promoted_at: float | None = None
    wanted = None if affected is None else frozenset(affected)
    while True:
        now = time.monotonic()
        if promoted_at is None and _safely(promoted):
            promoted_at = now
        since_kill = driver.answers(since=killed_at)
        back = (
            _back_on_redis(since_kill, wanted, killed_at)
            if strict
            else _first_redis(since_kill, wanted, killed_at)
        )
        if promoted_at is not None and back is not None and now - killed_at - back >= settle_s:
            break
        if now - killed_at > timeout_s:
            break
        time.sleep(0.05)
    observed = time.monotonic()
    samples = driver.answers(since=started)
    after = [s for s in samples if s.sent_at >= killed_at]
    return FailoverResult(
        killed_at=killed_at,
        promoted_after_s=None if promoted_at is None else promoted_at - killed_at,
        first_redis_after_s=_first_redis(after, wanted, killed_at),
        back_on_redis_after_s=_back_on_redis(after, wanted, killed_at),
        observed_s=observed - killed_at,
        before=[s for s in samples if s.sent_at < killed_at],
        after=after,
        affected=wanted,
    )


def _back_on_redis(
    samples: Sequence[Answer], affected: frozenset[str] | None, killed_at: float
) -> float | None:
    """Seconds from the kill to the last affected answer not from Redis (0: there was none);
    None while no affected answer since then came from Redis."""
    mine = [s for s in samples if affected is None or s.entity_id in affected]
    last_other = max((s.sent_at for s in mine if s.source != Source.REDIS), default=None)
    if last_other is None:
        return 0.0 if mine else None
    if not any(s.source == Source.REDIS and s.sent_at > last_other for s in mine):
        return None
    return last_other - killed_at


def _first_redis(
    samples: Sequence[Answer], affected: frozenset[str] | None, killed_at: float
) -> float | None:
    """Seconds from the kill to the first affected answer from Redis; None: none yet."""
    firsts = (
        s.sent_at
        for s in samples
        if s.source == Source.REDIS and (affected is None or s.entity_id in affected)
    )
    first = min(firsts, default=None)
    return None if first is None else first - killed_at


def _safely(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except (RedisError, OSError, LookupError, StopIteration):
        return False  # a topology being rearranged refuses questions now and then
