"""The DynamoDB backing store: the reference design's persistent tier, on boto3.

Table layout: one item per entity group.

- ``_pk`` (S), the partition key: the Redis key string, ``user:{u1}:features``.
- ``_event_ms`` (N): the newest event time of the values the item holds.
- ``_grp`` (S): ``entity:group`` (``user:features``), what ``scan`` filters on.
- ``_expires_at`` (N): when the group's TTL runs out, ``_event_ms`` plus the
  TTL, in epoch seconds rounded up: the attribute to give DynamoDB's own TTL
  feature (below).
- ``_rev`` (N): a revision counter, for the conditional writes below.
- hash group: one N attribute per feature, named as the feature; and
  ``_value_ms`` (M), feature -> event time (N) of each value older than
  ``_event_ms``, absent when every value is at ``_event_ms``.
- sorted-set group: one M attribute named as the feature, member -> score (N),
  trimmed to the group's ``top_n`` newest.
- string group: one B attribute named as the feature: the packed
  little-endian float32 bytes, the very bytes Redis keeps.  Binary rather
  than a list of N: 4 bytes a value instead of 15-20 (a float32 read as a
  decimal takes up to 17 digits), so smaller items and fewer capacity
  units, bit-exact, and decoded by the same dtype code as Redis' blob.

Bookkeeping attributes start with ``_``, which the registry forbids in
feature names, so no feature can collide with them.

Expiry: a group older than its TTL counts as absent (``write_rules.is_live``,
by ``_event_ms`` and the store's clock): reads answer it as a miss, and a
write replaces it whole instead of merging into it.  The store deletes
nothing.  DynamoDB's TTL, enabled on ``_expires_at``, deletes expired items,
but lazily, in the background: an item can linger for up to about 48 hours
after it expired (AWS now says "a few days"), and reads return it until
then, so reads filter by event time regardless.

Reads are ``BatchGetItem`` calls of at most 100 distinct keys (eventually
consistent).  Keys DynamoDB leaves unprocessed (throttling) are asked
again after a short, doubling backoff while the read's budget
(``read_budget_s``, from the start of the call) lasts; after that the read
raises ``StoreTimeout`` rather than report keys as absent that were never
looked at.

Writes merge value by value (``write_rules.held_after_write``), which no update
expression can do, so a write reads the items it touches (``BatchGetItem``,
consistent), merges in Python, and puts each changed item on condition that
its ``_rev`` is unchanged (or, for an item written before ``_rev`` existed,
its ``_event_ms``); when another writer got there first it reads that item
again and retries.  A value DynamoDB cannot hold (a number beyond its 38
digits or its range of 1e-130 to 9.99e125), an item it refuses as invalid
(over 400 KB) or an item that cannot be decoded refuses that update only.

botocore's errors are translated into ``StoreError`` leaves here and
nowhere else.
"""

from __future__ import annotations

import decimal
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import boto3
import botocore.exceptions
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.config import Config

from features.burst_log import BurstLog
from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import FeatureGroup
from features.stores.backing import (
    UnreadableRecord,
    checked_values,
    entity_id_of,
    read_held,
)
from features.stores.base import FeatureUpdate, ReadRequest, StoredValues, WriteOutcome
from features.stores.codecs import codec_of
from features.stores.held import HeldGroup, as_update, group_label
from features.stores.write_rules import (
    Clock,
    epoch_ms,
    expires_at_ms,
    held_after_write,
)
from features.timing import Stage, StageTimer

__all__ = ["DynamoDbStore", "create_table", "dynamodb_client"]

KEYS_PER_BATCH = 100
"""The most keys one ``BatchGetItem`` call may ask for."""

WRITE_ATTEMPTS = 8
"""How often a write of one item retries when another writer changed it meanwhile."""

WRITE_READ_BUDGET_S = 2.0
"""How long a write may keep asking for items DynamoDB left unprocessed (throttling)."""

_PK = "_pk"
_EVENT_MS = "_event_ms"
_GROUP = "_grp"
_REV = "_rev"
_EXPIRES_AT = "_expires_at"
_VALUE_MS = "_value_ms"

_FIRST_BACKOFF_S = 0.005
_MAX_BACKOFF_S = 0.1

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
}

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

_log = logging.getLogger(__name__)
_unreadable_log = BurstLog(_log)


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
    """The held values of one item, as the low-level client returned it.

    ``UnreadableRecord`` when the item cannot be decoded.
    """
    try:
        attributes = {name: _deserializer.deserialize(value) for name, value in item.items()}
    except (TypeError, ValueError, decimal.DecimalException) as exc:
        raise UnreadableRecord(f"an attribute cannot be decoded: {exc}") from None
    event_ms = attributes.get(_EVENT_MS)
    if not isinstance(event_ms, Decimal) or event_ms != event_ms.to_integral_value():
        raise UnreadableRecord(f"{_EVENT_MS} is {event_ms!r}, not epoch milliseconds")
    codec = codec_of(group)
    record = {
        name: value.value if isinstance(value, Binary) else value
        for name, value in attributes.items()
        if not name.startswith("_")
    }
    try:
        stored = codec.values_of_record(group, record)
    except ValueError as exc:
        raise UnreadableRecord(str(exc)) from None
    values = checked_values(group, stored)
    if not codec.keeps_value_times:
        return HeldGroup(int(event_ms), values)
    times = attributes.get(_VALUE_MS, {})
    if not isinstance(times, Mapping) or not all(isinstance(t, Decimal) for t in times.values()):
        raise UnreadableRecord(f"{_VALUE_MS} is not a map of event times")
    older = {name: int(at) for name, at in times.items() if name in values}
    return HeldGroup(int(event_ms), values, older)


def _readable(group: FeatureGroup, item: Mapping[str, Any] | None) -> HeldGroup | None:
    """The held group in ``item``; an item that cannot be decoded is logged and reads as absent."""
    if item is None:
        return None
    try:
        return _held(group, item)
    except UnreadableRecord as exc:
        _unreadable_log.error(f"ignoring the DynamoDB item at {item[_PK]['S']}", exc)
        return None


class _OutOfRange(ValueError):
    """A value DynamoDB cannot hold."""


_SMALLEST = Decimal("1e-130")
"""The smallest magnitude of a DynamoDB number but zero (boto3 lets smaller ones through)."""


def _attribute(name: str, value: Any) -> Mapping[str, Any]:
    """``value`` serialized for DynamoDB; ``_OutOfRange`` names ``name`` when it cannot be."""
    numbers = value.values() if isinstance(value, Mapping) else [value]
    try:
        if any(number and abs(number) < _SMALLEST for number in numbers):
            raise decimal.Underflow
        serialized: Mapping[str, Any] = _serializer.serialize(value)
    except decimal.DecimalException:
        raise _OutOfRange(
            f"{name}: a value is outside DynamoDB's numbers "
            "(38 significant digits, magnitude 1e-130 to 9.99e125)"
        ) from None
    return serialized


def _item(key: str, group: FeatureGroup, held: HeldGroup, rev: int) -> dict[str, Any]:
    """The item that holds ``held`` at ``key``, revision ``rev``; see the module docstring."""
    item: dict[str, Any] = {
        _PK: {"S": key},
        _EVENT_MS: {"N": str(held.event_ms)},
        _GROUP: {"S": group_label(group)},
        _EXPIRES_AT: {"N": str(_expires_at_s(group, held.event_ms))},
        _REV: {"N": str(rev)},
    }
    codec = codec_of(group)
    for name, value in codec.record(group, held.values).items():
        if isinstance(value, bytes):
            item[name] = {"B": value}
        elif isinstance(value, Mapping):
            item[name] = _attribute(name, {m: _number(number) for m, number in value.items()})
        else:
            item[name] = _attribute(name, _number(value))
    if codec.keeps_value_times and held.value_ms:
        item[_VALUE_MS] = {"M": {n: {"N": str(at)} for n, at in held.value_ms.items()}}
    return item


def _key(group: FeatureGroup, entity_id: str) -> str:
    return feature_key(group.entity.key_name, entity_id, group.name)


def _expires_at_s(group: FeatureGroup, event_ms: int) -> int:
    """``_expires_at``: rounded up, so DynamoDB's TTL never deletes a live item."""
    return -(-expires_at_ms(group, event_ms) // 1000)


def _unchanged(item: Mapping[str, Any] | None) -> dict[str, Any]:
    """The condition of a ``PutItem`` replacing ``item``: nobody else wrote it since it was read."""
    if item is None:
        return {
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": _PK},
        }
    if _REV in item:
        return {
            "ConditionExpression": "#rev = :rev",
            "ExpressionAttributeNames": {"#rev": _REV},
            "ExpressionAttributeValues": {":rev": item[_REV]},
        }
    return {
        "ConditionExpression": "attribute_not_exists(#rev) AND #e = :e",
        "ExpressionAttributeNames": {"#rev": _REV, "#e": _EVENT_MS},
        "ExpressionAttributeValues": {":e": item[_EVENT_MS]},
    }


class DynamoDbStore:
    """The DynamoDB store over a boto3 client (``dynamodb_client``); thread-safe."""

    def __init__(
        self, table_name: str, client: Any, read_budget_s: float = 0.1, clock: Clock = time.time
    ) -> None:
        """Use table ``table_name``; a read retries unprocessed keys for ``read_budget_s``.

        ``clock`` says which groups have expired.
        """
        self._table = table_name
        self._client = client
        self._read_budget_s = read_budget_s
        self._clock = clock

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order; one ``BatchGetItem`` per 100 distinct keys."""
        if timer is None:
            return self._read(requests)
        with timer.stage(Stage.BACKING):
            return self._read(requests)

    def _read(self, requests: Sequence[ReadRequest]) -> list[StoredValues | None]:
        keys = [_key(request.group, request.entity_id) for request in requests]
        distinct = list(dict.fromkeys(keys))
        deadline = time.monotonic() + self._read_budget_s
        items: dict[str, Mapping[str, Any]] = {}
        for start in range(0, len(distinct), KEYS_PER_BATCH):
            items.update(self._batch_get(distinct[start : start + KEYS_PER_BATCH], deadline))
        now_ms = epoch_ms(self._clock)
        return [
            read_held(request, _readable(request.group, items.get(key)), now_ms)
            for request, key in zip(requests, keys, strict=True)
        ]

    def _batch_get(
        self, keys: Sequence[str], deadline: float, consistent: bool = False
    ) -> dict[str, Mapping[str, Any]]:
        pending: Mapping[str, Any] = {
            self._table: {"Keys": [{_PK: {"S": key}} for key in keys], "ConsistentRead": consistent}
        }
        found: dict[str, Mapping[str, Any]] = {}
        backoff_s = _FIRST_BACKOFF_S
        while True:
            with _translated_errors():
                reply = self._client.batch_get_item(RequestItems=pending)
            for item in reply.get("Responses", {}).get(self._table, []):
                found[item[_PK]["S"]] = item
            pending = reply.get("UnprocessedKeys") or {}
            if not pending.get(self._table, {}).get("Keys"):
                return found
            if time.monotonic() + backoff_s >= deadline:
                left = len(pending[self._table]["Keys"])
                raise StoreTimeout(f"DynamoDB left {left} keys unprocessed within the read budget")
            time.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, _MAX_BACKOFF_S)

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """Merge each update into what is held; see ``OnlineStore.write`` and the module docstring.

        One consistent ``BatchGetItem`` per 100 distinct keys, then one conditional
        ``PutItem`` per changed update.
        """
        if not updates:
            return []
        now_ms = epoch_ms(self._clock)
        keys = [_key(update.group, update.entity_id) for update in updates]
        distinct = list(dict.fromkeys(keys))
        deadline = time.monotonic() + WRITE_READ_BUDGET_S
        items: dict[str, Mapping[str, Any] | None] = dict.fromkeys(distinct)
        for start in range(0, len(distinct), KEYS_PER_BATCH):
            chunk = distinct[start : start + KEYS_PER_BATCH]
            items.update(self._batch_get(chunk, deadline, consistent=True))
        with _translated_errors():
            return [
                self._write_one(update, key, items, now_ms)
                for update, key in zip(updates, keys, strict=True)
            ]

    def _write_one(
        self,
        update: FeatureUpdate,
        key: str,
        items: dict[str, Mapping[str, Any] | None],
        now_ms: int,
    ) -> WriteOutcome:
        """Merge ``update`` into ``items[key]`` and put the result; ``items`` follows along."""
        group = update.group
        for _ in range(WRITE_ATTEMPTS):
            item = items[key]
            try:
                held = None if item is None else _held(group, item)
            except UnreadableRecord as exc:
                return WriteOutcome(refused=f"DynamoDB holds an unreadable item at {key}: {exc}")
            merged = held_after_write(held, update, now_ms)
            if merged.after is None:
                return merged.outcome
            rev = int(item[_REV]["N"]) if item is not None and _REV in item else 0
            try:
                new_item = _item(key, group, merged.after, rev + 1)
            except _OutOfRange as exc:
                return WriteOutcome(refused=f"DynamoDB cannot hold {exc}")
            try:
                self._client.put_item(TableName=self._table, Item=new_item, **_unchanged(item))
            except botocore.exceptions.ClientError as exc:
                code = _error_code(exc)
                if code == "ConditionalCheckFailedException":
                    items[key] = self._client.get_item(
                        TableName=self._table, Key={_PK: {"S": key}}, ConsistentRead=True
                    ).get("Item")
                    continue
                if code == "ValidationException":
                    return WriteOutcome(refused=f"DynamoDB refused the item at {key}: {exc}")
                raise
            items[key] = new_item
            return merged.outcome
        raise StoreUnavailable(f"{key} changed under {WRITE_ATTEMPTS} writes in a row")

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
                held = _readable(group, item)
                if held is not None:
                    yield as_update(entity_id_of(item[_PK]["S"], group), group, held)
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()
