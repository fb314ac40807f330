"""Reading a whole Redis database's contents, to compare states in tests."""

from __future__ import annotations

from typing import Any

import redis

__all__ = ["redis_state"]


def redis_state(client: redis.Redis) -> dict[bytes, Any]:
    """Every key's contents (not its TTL): hashes, sorted sets with scores, strings."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            state[key] = client.hgetall(key)
        elif kind == b"zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = client.get(key)
    return state
