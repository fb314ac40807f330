"""Redis behind Sentinel: the standalone stores over connections the sentinels direct.

redis-py's ``SentinelConnectionPool`` asks the sentinels where the primary
(or, for replica reads, a replica) is each time it opens a connection, so
the read path is the standalone store's, unchanged: one pipelined round
trip on a pooled connection.  When the primary dies, its connections fail,
the Redis breaker opens and requests fall back; the first connection opened
after the sentinels have promoted a replica reaches it, and the breaker's
probe closes the breaker again.  ``REDIS_URL``, when set, gives only the
credentials, the database and TLS (``rediss://``); its host is ignored.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from features.settings import Settings
from features.stores.redis import AsyncRedisStore

__all__ = ["AsyncSentinelStore", "async_sentinel_store", "sentinel_client"]


def _connection_options(settings: Settings) -> dict[str, Any]:
    """Credentials, database and TLS from ``REDIS_URL``; the sentinels say where to connect."""
    if not settings.redis_url:
        return {}
    parsed = redis.connection.parse_url(settings.redis_url)
    options = {name: parsed[name] for name in ("db", "username", "password") if name in parsed}
    if parsed.get("connection_class") is redis.connection.SSLConnection:
        options["ssl"] = True
    return options


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """The sentinels are asked with the connect timeout, for both connecting and answering."""
    timeout_s = settings.redis_connect_timeout_ms / 1000.0
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}


class AsyncSentinelStore(AsyncRedisStore):
    """The standalone asyncio store over a sentinel-directed pool; closing it also closes the
    connections to the sentinels."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        timeout_s: float,
        sentinel: redis.asyncio.sentinel.Sentinel,
    ) -> None:
        super().__init__(client, timeout_s)
        self._sentinel = sentinel

    async def close(self) -> None:
        """Close the connections to Redis and to the sentinels."""
        await super().close()
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()


def async_sentinel_store(
    settings: Settings, options: dict[str, Any], timeout_s: float, for_reads: bool
) -> AsyncSentinelStore:
    """The asyncio store over a pool that connects where the sentinels say: to the primary,
    or with ``for_reads`` and ``read_from_replicas`` to a replica (the primary when none is
    up).  ``options`` are the connections' (timeouts, pool size, retries)."""
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs=_sentinel_options(settings),
        **_connection_options(settings),
    )
    name = settings.sentinel_master or ""
    if for_reads and settings.read_from_replicas:
        client = sentinel.slave_for(name, **options)
    else:
        client = sentinel.master_for(name, **options)
    return AsyncSentinelStore(client, timeout_s, sentinel)


def sentinel_client(settings: Settings, options: dict[str, Any]) -> redis.Redis:
    """A blocking client of the primary the sentinels name, for tools."""
    sentinel = redis.sentinel.Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs=_sentinel_options(settings),
        **_connection_options(settings),
    )
    client: redis.Redis = sentinel.master_for(settings.sentinel_master or "", **options)
    return client
