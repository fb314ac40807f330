"""The Redis online store: every read is one pipelined round trip.

A read of N entities x M groups queues one command per (entity, group) on a
``pipeline(transaction=False)`` and sends them together: ``HMGET`` of the
requested fields for hashes, ``ZREVRANGE 0 top_n-1`` for sorted sets, ``GET``
for blobs.  The clients are built fail-fast (50 ms socket timeout, 100 ms
connect timeout, no retries, a bounded pool that refuses rather than
queues), since redis-py's defaults (5 s timeouts, retries) would spend a
whole latency budget on one sick connection.  redis-py errors are
translated into ``StoreError`` leaves here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.burst_log import BurstLog
from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import Structure
from features.settings import Settings
from features.stores.base import ReadRequest, StoredValues, WriteRow
from features.timing import StageTimer

__all__ = [
    "AsyncRedisStore",
    "RedisStore",
    "async_client",
    "sync_client",
]

_log = logging.getLogger(__name__)
_bad_value_log = BurstLog(_log)

WRITE_CHUNK_ROWS = 500
"""Rows per pipelined write round trip."""


def _client_options(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_ms / 1000.0,
        "socket_connect_timeout": settings.redis_connect_timeout_ms / 1000.0,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "max_connections": settings.redis_pool_size,
    }


def async_client(settings: Settings) -> redis.asyncio.Redis:
    """A fail-fast asyncio client for ``settings.redis_url``, for the service's hot path."""
    if not settings.redis_url:
        raise StoreError("REDIS_URL is not set")
    return redis.asyncio.Redis.from_url(settings.redis_url, **_client_options(settings))


def sync_client(settings: Settings) -> redis.Redis:
    """A fail-fast blocking client for ``settings.redis_url``, for command-line tools and tests."""
    if not settings.redis_url:
        raise StoreError("REDIS_URL is not set")
    return redis.Redis.from_url(settings.redis_url, **_client_options(settings))


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn redis-py's exceptions into ours, once, at the boundary."""
    try:
        yield
    except redis.exceptions.TimeoutError as exc:
        raise StoreTimeout(f"Redis did not answer in time: {exc}") from exc
    except redis.exceptions.ConnectionError as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"Redis failed: {exc}") from exc
    except TimeoutError as exc:
        raise StoreTimeout("Redis did not answer in time") from exc
    except OSError as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


def _queue_read(pipe: Any, request: ReadRequest) -> None:
    group = request.group
    key = feature_key(group.entity.name, request.entity_id, group.name)
    if group.structure is Structure.HASH:
        pipe.hmget(key, request.fields)
    elif group.structure is Structure.SORTED_SET:
        pipe.zrevrange(key, 0, (group.top_n or 1) - 1)
    else:
        pipe.get(key)


def _decode(request: ReadRequest, reply: Any) -> StoredValues | None:
    """The valid values in one reply; invalid ones are logged and left out."""
    group = request.group
    if isinstance(reply, Exception):
        _bad_value_log.error(f"Redis refused a read of {group.entity.name}:{group.name}", reply)
        return None
    if group.structure is Structure.HASH:
        pairs = zip(request.fields, reply, strict=True)
        values: dict[str, Any] = {}
        for name, raw in pairs:
            if raw is None:
                continue
            feature = group.by_name[name]
            try:
                values[name] = feature.kind.decode(raw, feature.dim)
            except ValueError as exc:
                _bad_value_log.error(f"ignoring a stored {group.name}.{name} value", exc)
        return values or None
    if not reply:
        return None
    feature = group.features[0]
    try:
        return {feature.name: feature.kind.decode(reply, feature.dim)}
    except ValueError as exc:
        _bad_value_log.error(f"ignoring a stored {group.name} value", exc)
        return None


def _decode_all(
    requests: Sequence[ReadRequest], replies: Sequence[Any], timer: StageTimer | None
) -> list[StoredValues | None]:
    if timer is None:
        return [_decode(request, reply) for request, reply in zip(requests, replies, strict=True)]
    with timer.stage("decode"):
        return [_decode(request, reply) for request, reply in zip(requests, replies, strict=True)]


def _queue_write(pipe: Any, row: WriteRow) -> None:
    group = row.group
    key = feature_key(group.entity.name, row.entity_id, group.name)
    ttl_ms = int(group.ttl.total_seconds() * 1000)
    if group.structure is Structure.HASH:
        encoded = {}
        for name, value in row.values.items():
            feature = group.by_name[name]
            encoded[name] = feature.kind.encode(feature.kind.normalize(value, feature.dim))
        pipe.hset(key, mapping=encoded)
        pipe.pexpire(key, ttl_ms)
    elif group.structure is Structure.SORTED_SET:
        members = dict(row.values[group.features[0].name])
        pipe.zadd(key, members)
        pipe.zremrangebyrank(key, 0, -(group.top_n or 1) - 1)
        pipe.pexpire(key, ttl_ms)
    else:
        feature = group.features[0]
        vector = feature.kind.normalize(row.values[feature.name], feature.dim)
        pipe.set(key, feature.kind.encode(vector), px=ttl_ms)


class RedisStore:
    """The Redis store over a blocking client (``sync_client``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order, from one pipelined round trip."""
        if not requests:
            return []
        with _translated_errors(), self._client.pipeline(transaction=False) as pipe:
            for request in requests:
                _queue_read(pipe, request)
            if timer is None:
                replies = pipe.execute(raise_on_error=False)
            else:
                with timer.stage("redis"):
                    replies = pipe.execute(raise_on_error=False)
        return _decode_all(requests, replies, timer)

    def write(self, rows: Sequence[WriteRow]) -> None:
        """Write values and TTL together, ``WRITE_CHUNK_ROWS`` rows per round trip."""
        with _translated_errors():
            for start in range(0, len(rows), WRITE_CHUNK_ROWS):
                with self._client.pipeline(transaction=False) as pipe:
                    for row in rows[start : start + WRITE_CHUNK_ROWS]:
                        _queue_write(pipe, row)
                    pipe.execute()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


class AsyncRedisStore:
    """The Redis store over an asyncio client (``async_client``), for the service."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order, from one pipelined round trip."""
        if not requests:
            return []
        with _translated_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for request in requests:
                    _queue_read(pipe, request)
                if timer is None:
                    replies = await pipe.execute(raise_on_error=False)
                else:
                    with timer.stage("redis"):
                        replies = await pipe.execute(raise_on_error=False)
        return _decode_all(requests, replies, timer)

    async def ping(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            with _translated_errors():
                return bool(await self._client.ping())
        except StoreError:
            return False

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()
