"""Opening the store a setting names: one place that knows every implementation.

The rules the backing stores share live in ``backing``; the stores import
them, and this module imports the stores, so no module imports its own
importer.  Each implementation is imported only when named, so SQLite users
never load boto3 and standalone users never load the cluster store.

Redis is opened by ``FEATSERVE_REDIS_MODE``, each mode one entry of
``_MODES`` (the service's asyncio store and a blocking client for tools):
``standalone`` is ``redis.async_redis_store`` (the hot path, as it was),
``cluster`` the cluster store (``redis_cluster``), ``sentinel`` the
standalone stores over connections the sentinels direct
(``redis_sentinel``).  Every mode gets the same fail-fast options: the
socket and connect timeouts, no retries, a bounded pool per server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import redis

from features.errors import StoreError
from features.settings import RedisMode, Settings
from features.stores.backing import AsyncBackingStore, BackingStore
from features.stores.redis import (
    AsyncRedisStore,
    RedisStore,
    async_redis_store,
    call_timeout_s,
    client_options,
    sync_client,
    translated_errors,
)
from features.stores.write_rules import Clock

__all__ = [
    "NODE_SHARE_OF_DEADLINE",
    "async_backing_store",
    "async_online_store",
    "open_backing_store",
    "open_online_store",
    "open_redis_client",
]

NODE_SHARE_OF_DEADLINE = 0.6
"""The longest a cluster read waits for one node, as a share of the feature deadline: the
resolver abandons a read ``TIMER_SLACK_S`` before the deadline, and a short deadline
``SLACK_SHARE`` of itself before (``features.serving.resolver``), so the healthy
nodes' answers are back, with a hung node's requests marked failed, before it does."""


def async_online_store(settings: Settings, for_writes: bool = False) -> AsyncRedisStore:
    """The Redis store for the service, as ``redis_mode`` says; ``for_writes`` waits the
    write timeout and always talks to primaries."""
    if settings.redis_missing:
        raise StoreError(settings.redis_missing)
    return _MODES[settings.redis_mode].async_store(settings, for_writes)


def open_redis_client(
    settings: Settings, for_writes: bool = False
) -> redis.Redis | redis.RedisCluster:
    """A blocking Redis client for tools and tests, as ``redis_mode`` says; it talks to
    primaries only.  ``for_writes`` waits the write timeout."""
    if settings.redis_missing:
        raise StoreError(settings.redis_missing)
    return _MODES[settings.redis_mode].blocking_client(settings, for_writes)


def _async_cluster_store(settings: Settings, for_writes: bool) -> AsyncRedisStore:
    from features.stores.redis_cluster import AsyncRedisClusterStore, async_cluster_client

    replicas = settings.read_from_replicas and not for_writes
    client = async_cluster_client(
        settings.redis_url or "",
        settings.redis_pool_size,
        settings.redis_connect_timeout_ms / 1000.0,
        read_from_replicas=replicas,
    )
    timeout_s = call_timeout_s(settings, for_writes)
    return AsyncRedisClusterStore(
        client,
        timeout_s,
        node_timeout_s=min(timeout_s, settings.deadline_s * NODE_SHARE_OF_DEADLINE),
        pool_size=settings.redis_pool_size,
        read_from_replicas=replicas,
        breaker_failures=settings.breaker_failures,
        breaker_reset_s=settings.breaker_reset_s,
    )


def _cluster_client(settings: Settings, for_writes: bool) -> redis.RedisCluster:
    from features.stores.redis_cluster import cluster_client

    # A blocking cluster client reads the slot map as it is built: translate its errors.
    with translated_errors():
        return cluster_client(
            settings.redis_url or "",
            call_timeout_s(settings, for_writes),
            settings.redis_connect_timeout_ms / 1000.0,
        )


def _async_sentinel_store(settings: Settings, for_writes: bool) -> AsyncRedisStore:
    from features.stores.redis_sentinel import async_sentinel_store

    # As async_redis_store builds its client: nothing sent on connect, no socket timeout.
    options = {
        **client_options(settings, None, for_asyncio=True),
        "protocol": 2,
        "driver_info": None,
    }
    return async_sentinel_store(
        settings, options, call_timeout_s(settings, for_writes), for_reads=not for_writes
    )


def _sentinel_client(settings: Settings, for_writes: bool) -> redis.Redis:
    from features.stores.redis_sentinel import sentinel_client

    return sentinel_client(
        settings,
        client_options(settings, call_timeout_s(settings, for_writes), for_asyncio=False),
    )


@dataclass(frozen=True)
class _Mode:
    """How one ``redis_mode`` opens Redis: the service's store and a blocking client."""

    async_store: Callable[[Settings, bool], AsyncRedisStore]
    blocking_client: Callable[[Settings, bool], redis.Redis | redis.RedisCluster]


_MODES: Mapping[RedisMode, _Mode] = {
    "standalone": _Mode(async_redis_store, sync_client),
    "cluster": _Mode(_async_cluster_store, _cluster_client),
    "sentinel": _Mode(_async_sentinel_store, _sentinel_client),
}


def open_online_store(settings: Settings, for_writes: bool = False) -> RedisStore:
    """The blocking Redis store for tools (``materialize``, ``rewarm``) and tests."""
    return RedisStore(
        open_redis_client(settings, for_writes),
        keys_per_call=settings.materialize_keys_per_call,
        in_flight=settings.materialize_in_flight,
    )


def open_backing_store(spec: str, clock: Clock = time.time) -> BackingStore:
    """The store a spec names: ``sqlite:PATH`` or ``dynamodb:TABLE``; ``ValueError`` otherwise.

    ``clock`` says which groups have expired (``write_rules.is_live``).
    DynamoDB's endpoint, region and credentials come from the usual AWS
    variables (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ...).
    """
    kind, _, where = spec.partition(":")
    if kind == "sqlite" and where:
        from features.stores.sqlite import SqliteStore

        return SqliteStore(where, clock=clock)
    if kind == "dynamodb" and where:
        from features.stores.dynamodb import DynamoDbStore, dynamodb_client

        return DynamoDbStore(where, dynamodb_client(), clock=clock)
    raise ValueError(f"backing store {spec!r}: expected sqlite:PATH or dynamodb:TABLE")


def async_backing_store(
    spec: str, clock: Clock = time.time, max_pending: int = 64
) -> AsyncBackingStore:
    """The backing store ``spec`` names, run on worker threads for the event loop.

    SQLite gets one thread, which owns this process's one connection;
    DynamoDB gets eight, since each call waits on the network.
    """
    workers = 8 if spec.startswith("dynamodb:") else 1
    return AsyncBackingStore(
        partial(open_backing_store, spec, clock), workers=workers, max_pending=max_pending
    )
