"""Building the resolver's tiers from settings: Redis first, then the backing store if any."""

from __future__ import annotations

import time
from collections.abc import Callable

from features.breaker import CircuitBreaker
from features.serving.resolver import Tier
from features.settings import Settings
from features.sources import Source
from features.stores.base import AsyncOnlineStore
from features.stores.redis import AsyncRedisStore

__all__ = ["backing_tier", "redis_tier"]


def redis_tier(
    store: AsyncRedisStore, settings: Settings, clock: Callable[[], float] = time.monotonic
) -> Tier:
    """Redis behind a breaker that also opens when more of its pool is in use than
    ``settings.breaker_pool_usage``."""
    breaker = CircuitBreaker(
        Source.REDIS, settings.breaker_failures, settings.breaker_reset_s, clock
    )
    limit = settings.breaker_pool_usage
    return Tier(Source.REDIS, store, breaker, saturated=lambda: store.pool_usage() > limit)


def backing_tier(
    store: AsyncOnlineStore, settings: Settings, clock: Callable[[], float] = time.monotonic
) -> Tier:
    """The persistent store behind its own breaker."""
    breaker = CircuitBreaker(
        Source.BACKING, settings.breaker_failures, settings.breaker_reset_s, clock
    )
    return Tier(Source.BACKING, store, breaker)
