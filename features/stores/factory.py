"""Opening the store a setting names: one place that knows every implementation.

The rules the backing stores share live in ``backing``; the stores import
them, and this module imports the stores, so no module imports its own
importer.  Each implementation is imported only when named, so SQLite users
never load boto3.
"""

from __future__ import annotations

import time
from functools import partial

from features.stores.backing import AsyncBackingStore, BackingStore, Clock

__all__ = ["async_backing_store", "open_backing_store"]


def open_backing_store(spec: str, clock: Clock = time.time) -> BackingStore:
    """The store a spec names: ``sqlite:PATH`` or ``dynamodb:TABLE``; ``ValueError`` otherwise.

    ``clock`` says which groups have expired (``backing.is_live``).
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
