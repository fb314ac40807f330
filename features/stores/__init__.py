"""Online stores behind one interface (``base``), with Redis as the primary one."""

from features.stores.base import (
    AsyncOnlineStore,
    FeatureUpdate,
    OnlineStore,
    ReadRequest,
    StoredRow,
    StoredValues,
)
from features.stores.redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncOnlineStore",
    "AsyncRedisStore",
    "FeatureUpdate",
    "OnlineStore",
    "ReadRequest",
    "RedisStore",
    "StoredRow",
    "StoredValues",
]
