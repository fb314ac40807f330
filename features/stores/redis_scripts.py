"""Server-side write scripts: values, TTL and ordering applied atomically by Redis.

Each entity group remembers the event time of the values it holds (a
hidden ``_event_ms`` field of the hash; a sibling ``<key>:_event_ms`` key
for a blob).  A write older than that is skipped on the server, so racing
writers or a replay of old data never roll values back, and re-running a
write is harmless.  Sorted sets need no such mark: members are scored by
event time, ``ZADD GT`` never lowers a member's score, and trimming keeps
the newest N.

Scripts are sent with ``EVALSHA`` by their SHA-1, which is computed here;
a store that gets ``NOSCRIPT`` (a restarted or flushed Redis) loads them and
retries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["EVENT_MS_FIELD", "HASH_WRITE", "SCRIPTS", "SORTED_SET_WRITE", "STRING_WRITE", "Script"]

EVENT_MS_FIELD = "_event_ms"
"""The hash field (and the blob sibling key suffix) holding the values' event time."""


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA-1."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


HASH_WRITE = Script(
    f"""
-- KEYS[1]: the hash. ARGV: event ms, ttl ms, then field, value pairs.
local held = redis.call('HGET', KEYS[1], '{EVENT_MS_FIELD}')
if held and tonumber(held) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], '{EVENT_MS_FIELD}', ARGV[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

STRING_WRITE = Script(
    """
-- KEYS[1]: the blob, KEYS[2]: its event-time key. ARGV: event ms, ttl ms, blob.
local held = redis.call('GET', KEYS[2])
if held and tonumber(held) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

SORTED_SET_WRITE = Script(
    """
-- KEYS[1]: the sorted set. ARGV: ttl ms, members to keep, then score, member pairs.
redis.call('ZADD', KEYS[1], 'GT', unpack(ARGV, 3))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

SCRIPTS = (HASH_WRITE, STRING_WRITE, SORTED_SET_WRITE)
"""Every script a store may need loaded."""
