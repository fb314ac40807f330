"""The DynamoDB backing store: the reference design's persistent tier, on boto3.

Table layout: one item per entity group.

- ``_pk`` (S), the partition key: the Redis key string, ``user:{u1}:features``.
- ``_event_ms`` (N): the event time of the values the item holds.
- ``_grp`` (S): ``entity:group`` (``user:features``), what ``scan`` filters on.
- hash group: one N attribute per feature, named as the feature.
- sorted-set group: one M attribute named as the feature, member -> score (N),
  trimmed to the group's ``top_n`` newest; plus ``_rev`` (N), a revision
  counter for the read-modify-write below.
- string group: one B attribute named as the feature: the packed
  little-endian float32 bytes, the very bytes Redis keeps.  Binary rather
  than a list of N: 4 bytes a value instead of 15-20 (a float32 read as a
  decimal takes up to 17 digits), so smaller items and fewer capacity
  units, bit-exact, and decoded by the same dtype code as Redis' blob.

Bookkeeping attributes start with ``_``, which the registry forbids in
feature names, so no feature can collide with them.

Reads are ``BatchGetItem`` calls of at most 100 distinct keys (eventually
consistent).  Keys DynamoDB leaves unprocessed (throttling) are asked
again after a short, doubling backoff while the read's budget
(``read_budget_s``, from the start of the call) lasts; after that the read
raises ``StoreTimeout`` rather than report keys as absent that were never
looked at.

Writes are one ``UpdateItem`` each.  Hash and string writes carry the
condition ``attribute_not_exists(_pk) OR _event_ms <= :event_ms``: an older
event fails it and is skipped (False); a hash update ``SET``s only its own
attributes, so a partial update merges.  A sorted set needs a max per member
and a trim, which no update expression can do, so it is read (consistent),
merged in Python (``backing.merge_members``) and written on condition that ``_rev``
is unchanged, retried when another writer got there first.

botocore's errors are translated into ``StoreError`` leaves here and
nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import boto3
import botocore.exceptions
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.config import Config

from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import FeatureGroup, Structure
from features.stores.backing import (
    AsyncBackingStore,
    HeldGroup,
    answer,
    checked_values,
    entity_id_of,
    group_label,
    merge_members,
)
from features.stores.base import FeatureUpdate, ReadRequest, StoredValues
from features.timing import StageTimer

__all__ = ["AsyncDynamoDbStore", "DynamoDbStore", "create_table", "dynamodb_client"]

KEYS_PER_BATCH = 100
"""The most keys one ``BatchGetItem`` call may ask for."""

SORTED_SET_ATTEMPTS = 8
"""How often a sorted-set write re-reads and retries when another writer changed the item."""

_PK = "_pk"
_EVENT_MS = "_event_ms"
_GROUP = "_grp"
_REV = "_rev"

_FIRST_BACKOFF_S = 0.005
_MAX_BACKOFF_S = 0.1

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
}

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn botocore's exceptions into ours, once, at the boundary."""
    try:
        yield
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as exc:
        raise StoreTimeout(f"DynamoDB did not answer in time: {exc}") from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise StoreUnavailable(f"DynamoDB is unreachable: {exc}") from exc
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in _THROTTLED:
            raise StoreUnavailable(f"DynamoDB throttled the call: {exc}") from exc
        raise StoreError(f"DynamoDB refused the call: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StoreError(f"DynamoDB failed: {exc}") from exc


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def dynamodb_client(timeout_s: float = 1.0, max_pool_connections: int = 10) -> Any:
    """A boto3 DynamoDB client that fails fast: ``timeout_s`` per call, no retries.

    Endpoint, region and credentials come from the usual AWS variables
    (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ...).
    """
    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
    )
    with _translated_errors():
        return boto3.client("dynamodb", config=config)


def create_table(client: Any, name: str) -> None:
    """Create the table ``name`` (on-demand billing) unless it exists, and wait until it is."""
    with _translated_errors():
        try:
            client.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": _PK, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": _PK, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )


def _number(value: float) -> Decimal:
    """A float or int as a DynamoDB number, exactly: its shortest round-tripping decimal."""
    return Decimal(repr(value))


def _held(group: FeatureGroup, item: Mapping[str, Any]) -> HeldGroup:
    """The held values of one item, as the low-level client returned it."""
    attributes = {name: _deserializer.deserialize(value) for name, value in item.items()}
    if group.structure is Structure.SORTED_SET:
        stored = attributes.get(group.features[0].name, {})
    else:
        stored = {
            name: value.value if isinstance(value, Binary) else value
            for name, value in attributes.items()
            if not name.startswith("_")
        }
    return HeldGroup(int(attributes[_EVENT_MS]), checked_values(group, stored))


def _key(group: FeatureGroup, entity_id: str) -> str:
    return feature_key(group.entity.name, entity_id, group.name)


class DynamoDbStore:
    """The DynamoDB store over a boto3 client (``dynamodb_client``); thread-safe."""

    def __init__(self, table_name: str, client: Any, read_budget_s: float = 0.1) -> None:
        """Use table ``table_name``; a read retries unprocessed keys for ``read_budget_s``."""
        self._table = table_name
        self._client = client
        self._read_budget_s = read_budget_s

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order; one ``BatchGetItem`` per 100 distinct keys."""
        if timer is None:
            return self._read(requests)
        with timer.stage("backing"):
            return self._read(requests)

    def _read(self, requests: Sequence[ReadRequest]) -> list[StoredValues | None]:
        keys = [_key(request.group, request.entity_id) for request in requests]
        distinct = list(dict.fromkeys(keys))
        deadline = time.monotonic() + self._read_budget_s
        items: dict[str, Mapping[str, Any]] = {}
        for start in range(0, len(distinct), KEYS_PER_BATCH):
            items.update(self._batch_get(distinct[start : start + KEYS_PER_BATCH], deadline))
        return [
            answer(request, None if key not in items else _held(request.group, items[key]))
            for request, key in zip(requests, keys, strict=True)
        ]

    def _batch_get(self, keys: Sequence[str], deadline: float) -> dict[str, Mapping[str, Any]]:
        pending: Mapping[str, Any] = {self._table: {"Keys": [{_PK: {"S": key}} for key in keys]}}
        found: dict[str, Mapping[str, Any]] = {}
        backoff_s = _FIRST_BACKOFF_S
        while True:
            with _translated_errors():
                reply = self._client.batch_get_item(RequestItems=pending)
            for item in reply.get("Responses", {}).get(self._table, []):
                found[item[_PK]["S"]] = item
            pending = reply.get("UnprocessedKeys") or {}
            if not pending:
                return found
            if time.monotonic() + backoff_s >= deadline:
                left = len(pending[self._table]["Keys"])
                raise StoreTimeout(f"DynamoDB left {left} keys unprocessed within the read budget")
            time.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, _MAX_BACKOFF_S)

    def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """Apply each update unless a newer event is held; one ``UpdateItem`` each.

        True where applied; False where skipped as older than the held event.
        """
        with _translated_errors():
            return [
                self._write_members(update)
                if update.group.structure is Structure.SORTED_SET
                else self._write_values(update)
                for update in updates
            ]

    def _write_values(self, update: FeatureUpdate) -> bool:
        group = update.group
        values: dict[str, Any]
        if group.structure is Structure.HASH:
            values = {name: _number(value) for name, value in update.values.items()}
        else:
            feature = group.features[0]
            values = {feature.name: feature.kind.encode(update.values[feature.name])}
        names = {"#pk": _PK, "#e": _EVENT_MS, "#g": _GROUP}
        bound: dict[str, Any] = {":e": update.event_ms, ":g": group_label(group)}
        assignments = ["#e = :e", "#g = :g"]
        for index, (name, value) in enumerate(values.items()):
            names[f"#f{index}"] = name
            bound[f":v{index}"] = value
            assignments.append(f"#f{index} = :v{index}")
        return self._update(
            _key(group, update.entity_id),
            "SET " + ", ".join(assignments),
            "attribute_not_exists(#pk) OR #e <= :e",
            names,
            bound,
        )

    def _write_members(self, update: FeatureUpdate) -> bool:
        group = update.group
        key = _key(group, update.entity_id)
        for _ in range(SORTED_SET_ATTEMPTS):
            reply = self._client.get_item(
                TableName=self._table, Key={_PK: {"S": key}}, ConsistentRead=True
            )
            item = reply.get("Item")
            after = merge_members(None if item is None else _held(group, item), update)
            names = {"#e": _EVENT_MS, "#g": _GROUP, "#m": group.features[0].name, "#rev": _REV}
            bound: dict[str, Any] = {
                ":e": after.event_ms,
                ":g": group_label(group),
                ":m": {member: _number(score) for member, score in after.values.items()},
            }
            if item is None:
                condition = "attribute_not_exists(#rev)"
                bound[":next"] = 1
            else:
                condition = "#rev = :rev"
                bound[":rev"] = int(item[_REV]["N"])
                bound[":next"] = bound[":rev"] + 1
            expression = "SET #e = :e, #g = :g, #m = :m, #rev = :next"
            if self._update(key, expression, condition, names, bound):
                return True
        raise StoreError(f"{key} changed under {SORTED_SET_ATTEMPTS} sorted-set writes in a row")

    def _update(
        self,
        key: str,
        expression: str,
        condition: str,
        names: Mapping[str, str],
        values: Mapping[str, Any],
    ) -> bool:
        """One conditional ``UpdateItem``; False when the condition failed."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={_PK: {"S": key}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=dict(names),
                ExpressionAttributeValues={
                    name: _serializer.serialize(value) for name, value in values.items()
                },
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def scan(self, group: FeatureGroup) -> Iterator[FeatureUpdate]:
        """Every held entity group of ``group``, a page (up to 1 MB) at a time."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "#g = :g",
            "ExpressionAttributeNames": {"#g": _GROUP},
            "ExpressionAttributeValues": {":g": {"S": group_label(group)}},
            "ConsistentRead": True,
        }
        while True:
            with _translated_errors():
                page = self._client.scan(**request)
            for item in page.get("Items", []):
                held = _held(group, item)
                entity_id = entity_id_of(item[_PK]["S"], group)
                yield FeatureUpdate(entity_id, group, held.event_ms, held.values)
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


class AsyncDynamoDbStore(AsyncBackingStore):
    """``DynamoDbStore`` on ``workers`` threads of its own (boto3 clients are thread-safe)."""

    def __init__(
        self,
        table_name: str,
        client: Any,
        read_budget_s: float = 0.1,
        workers: int = 8,
        max_pending: int = 64,
    ) -> None:
        super().__init__(
            partial(DynamoDbStore, table_name, client, read_budget_s),
            workers=workers,
            max_pending=max_pending,
        )
