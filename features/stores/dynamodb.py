"""The DynamoDB backing store: the reference design's persistent tier, on boto3.

Table layout: one item per entity group.

- ``_pk`` (S), the partition key: the Redis key string, ``user:{u1}:features``.
- ``_event_ms`` (N): the event time of the values the item holds.
- ``_grp`` (S): ``entity:group`` (``user:features``), what ``scan`` filters on.
- ``_expires_at`` (N): when the group's TTL runs out, ``_event_ms`` plus the
  TTL, in epoch seconds rounded up: the attribute to give DynamoDB's own TTL
  feature (below).
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

Expiry: a group older than its TTL counts as absent (``backing.is_live``,
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

Writes are conditional ``UpdateItem`` calls; a failed condition returns the
item as it was.  A string write's condition is that the item is absent, not
newer than the update, or expired: an older event fails it and is skipped
(False).  A hash update ``SET``s only its own attributes, so a partial
update merges, on condition that the item is absent, or live and not newer;
when it fails on an expired item, a second ``UpdateItem`` replaces that
whole, removing the features the update lacks, on condition that
``_event_ms`` is unchanged.  A sorted set needs a max per member and a trim,
which no update expression can do, so it is read (consistent), merged in
Python (``backing.merge_members``; into nothing when expired) and written on
condition that ``_rev`` is unchanged.  Both retry when another writer got
there first.

botocore's errors are translated into ``StoreError`` leaves here and
nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import boto3
import botocore.exceptions
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.config import Config

from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import FeatureGroup, Structure
from features.stores.backing import (
    Clock,
    HeldGroup,
    checked_values,
    entity_id_of,
    epoch_ms,
    expires_at_ms,
    group_label,
    is_live,
    merge_members,
    oldest_live_ms,
    read_held,
    unexpired,
)
from features.stores.base import FeatureUpdate, ReadRequest, StoredValues
from features.timing import StageTimer

__all__ = ["DynamoDbStore", "create_table", "dynamodb_client"]

KEYS_PER_BATCH = 100
"""The most keys one ``BatchGetItem`` call may ask for."""

WRITE_ATTEMPTS = 8
"""How often a sorted-set write, or a hash write replacing an expired item, retries when
another writer changed the item."""

_PK = "_pk"
_EVENT_MS = "_event_ms"
_GROUP = "_grp"
_REV = "_rev"
_EXPIRES_AT = "_expires_at"

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


def _expires_at_s(group: FeatureGroup, event_ms: int) -> int:
    """``_expires_at``: rounded up, so DynamoDB's TTL never deletes a live item."""
    return -(-expires_at_ms(group, event_ms) // 1000)


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
        with timer.stage("backing"):
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
            read_held(
                request, None if key not in items else _held(request.group, items[key]), now_ms
            )
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
        now_ms = epoch_ms(self._clock)
        with _translated_errors():
            return [
                self._write_members(update, now_ms)
                if update.group.structure is Structure.SORTED_SET
                else self._write_values(update, now_ms)
                for update in updates
            ]

    def _write_values(self, update: FeatureUpdate, now_ms: int) -> bool:
        group = update.group
        key = _key(group, update.entity_id)
        values: dict[str, Any]
        if group.structure is Structure.HASH:
            values = {name: _number(value) for name, value in update.values.items()}
        else:
            feature = group.features[0]
            values = {feature.name: feature.dtype.encode(update.values[feature.name])}
        names = {"#e": _EVENT_MS, "#g": _GROUP, "#x": _EXPIRES_AT}
        bound: dict[str, Any] = {
            ":e": update.event_ms,
            ":g": group_label(group),
            ":x": _expires_at_s(group, update.event_ms),
        }
        assignments = ["#e = :e", "#g = :g", "#x = :x"]
        for index, (name, value) in enumerate(values.items()):
            names[f"#f{index}"] = name
            bound[f":v{index}"] = value
            assignments.append(f"#f{index} = :v{index}")
        expression = "SET " + ", ".join(assignments)
        live = {":live": oldest_live_ms(group, now_ms)}
        if group.structure is Structure.STRING:
            # One attribute, replaced whole: an expired item needs nothing removed.
            refused = self._update(
                key,
                expression,
                "attribute_not_exists(#pk) OR #e <= :e OR #e < :live",
                names | {"#pk": _PK},
                bound | live,
            )
            return refused is None
        lacking = [name for name in group.feature_names if name not in values]
        removed = {f"#r{index}": name for index, name in enumerate(lacking)}
        replacement = expression + (f" REMOVE {', '.join(removed)}" if removed else "")
        for _ in range(WRITE_ATTEMPTS):
            refused = self._update(
                key,
                expression,
                "attribute_not_exists(#pk) OR (#e >= :live AND #e <= :e)",
                names | {"#pk": _PK},
                bound | live,
            )
            if refused is None:
                return True
            held_ms = int(refused[_EVENT_MS]["N"])
            if is_live(group, held_ms, now_ms):
                return False
            unchanged = {":held": held_ms}
            if (
                self._update(key, replacement, "#e = :held", names | removed, bound | unchanged)
                is None
            ):
                return True
        raise StoreError(f"{key} changed under {WRITE_ATTEMPTS} hash writes in a row")

    def _write_members(self, update: FeatureUpdate, now_ms: int) -> bool:
        group = update.group
        key = _key(group, update.entity_id)
        for _ in range(WRITE_ATTEMPTS):
            reply = self._client.get_item(
                TableName=self._table, Key={_PK: {"S": key}}, ConsistentRead=True
            )
            item = reply.get("Item")
            held = None if item is None else _held(group, item)
            after = merge_members(unexpired(group, held, now_ms), update)
            names = {
                "#e": _EVENT_MS,
                "#g": _GROUP,
                "#x": _EXPIRES_AT,
                "#m": group.features[0].name,
                "#rev": _REV,
            }
            bound: dict[str, Any] = {
                ":e": after.event_ms,
                ":g": group_label(group),
                ":x": _expires_at_s(group, after.event_ms),
                ":m": {member: _number(score) for member, score in after.values.items()},
            }
            if item is None:
                condition = "attribute_not_exists(#rev)"
                bound[":next"] = 1
            else:
                condition = "#rev = :rev"
                bound[":rev"] = int(item[_REV]["N"])
                bound[":next"] = bound[":rev"] + 1
            expression = "SET #e = :e, #g = :g, #x = :x, #m = :m, #rev = :next"
            if self._update(key, expression, condition, names, bound) is None:
                return True
        raise StoreError(f"{key} changed under {WRITE_ATTEMPTS} sorted-set writes in a row")

    def _update(
        self,
        key: str,
        expression: str,
        condition: str,
        names: Mapping[str, str],
        values: Mapping[str, Any],
    ) -> Mapping[str, Any] | None:
        """One conditional ``UpdateItem``: ``None`` when applied.

        When the condition failed: the item as it saw it (``{}`` when there was none).
        """
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
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                refused: Mapping[str, Any] = exc.response.get("Item", {})
                return refused
            raise
        return None

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
