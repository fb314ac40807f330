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

__all__ = ["async_sentinel_client", "sentinel_client"]


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


def async_sentinel_client(
    settings: Settings, options: dict[str, Any], for_reads: bool
) -> redis.asyncio.Redis:
    """An asyncio client whose pool connects where the sentinels say: to the primary, or with
    ``for_reads`` and ``read_from_replicas`` to a replica (the primary when none is up)."""
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs=_sentinel_options(settings),
        **_connection_options(settings),
    )
    name = settings.sentinel_master or ""
    if for_reads and settings.read_from_replicas:
        return sentinel.slave_for(name, **options)
    return sentinel.master_for(name, **options)


def sentinel_client(settings: Settings, options: dict[str, Any]) -> redis.Redis:
    """A blocking client of the primary the sentinels name, for tools."""
    sentinel = redis.sentinel.Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs=_sentinel_options(settings),
        **_connection_options(settings),
    )
    return sentinel.master_for(settings.sentinel_master or "", **options)
