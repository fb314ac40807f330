"""Online stores behind one interface (``base``), with Redis as the primary one."""

from features.stores.base import AsyncOnlineStore, OnlineStore, ReadRequest, StoredValues, WriteRow
from features.stores.redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncOnlineStore",
    "AsyncRedisStore",
    "OnlineStore",
    "ReadRequest",
    "RedisStore",
    "StoredValues",
    "WriteRow",
]
