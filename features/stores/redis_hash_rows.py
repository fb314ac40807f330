"""``HashRows`` into Redis: hundreds of entities per script call, calls pipelined per node.

The rows are cut into calls of ``HASH_WRITE_MANY`` (at most ``keys_per_call``
keys, about ``WRITE_CHUNK_BYTES`` of arguments), each packed by hiredis and
sent on one connection per node (by SHA; a node without the script gets that
call again as ``EVAL``, which caches it there).  Up to ``in_flight`` calls are sent to a
node before the first reply is read, so the client builds the next call
while Redis runs the last; the bound is also what a materialization can
take from a node at once, so online reads queue behind at most that many
calls (each a few milliseconds of server time).

Standalone Redis (or a Sentinel's primary) is one node.  A Redis Cluster
client's keys are grouped by the node that serves their slot (the
script's ``allow-cross-slot-keys`` flag lets one call name keys of many slots
of that node).  A call that the node answers with a redirect (``MOVED``,
``ASK``: a slot moved) is written again through the cluster client's own
pipeline, one script call per entity, which follows redirects, after the
slot map is read again (``RedisStore.write_hash_rows`` does that with
``SentHashRows.redirected``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import hiredis
import numpy as np
import numpy.typing as npt
import redis
from redis.crc import key_slot

from features.keys import feature_keys
from features.stores.base import WriteOutcome
from features.stores.hash_rows import HashRows, HashRowsWritten
from features.stores.redis_scripts import HASH_WRITE_MANY

__all__ = [
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_KEYS_PER_CALL",
    "SentHashRows",
    "write_hash_rows_to_redis",
]

DEFAULT_KEYS_PER_CALL = 256
"""Keys per script call: a call of 256 ten-field hashes holds Redis for about a millisecond."""

DEFAULT_IN_FLIGHT = 4
"""Calls sent to one node before waiting for the first reply."""

CALL_BYTES = 1 << 20
"""About the most argument bytes per call, whatever the number of keys."""

_REDIRECTS = ("MOVED", "ASK")

_NOT_HERE = (b"non local key", b"MOVED", b"ASK")
"""In a key's error from the script: the node does not serve its slot (any more)."""


class SentHashRows:
    """What the nodes answered for ``HashRows``: flags per entity, refusals, and the entities
    of calls a node redirected (to be written again through the cluster client)."""

    def __init__(self, rows: HashRows) -> None:
        self.flags = np.full((len(rows), len(rows.fields)), ord("-"), dtype=np.uint8)
        """E x n: per entity and field, ``1`` landed, ``0`` a newer value held, ``-`` not
        written (no value, or the entity was refused or redirected), as bytes."""
        self.refused: dict[int, str] = {}
        self.redirected: list[int] = []

    def settle(self, index: int, outcome: WriteOutcome, rows: HashRows) -> None:
        """Record ``outcome``, the per-update write of the redirected entity ``index``."""
        if outcome.refused is not None:
            self.refused[index] = outcome.refused
        self.flags[index] = [
            (ord("1") if name in outcome.landed else ord("0")) if present else ord("-")
            for name, present in zip(rows.fields, rows.present[index].tolist(), strict=True)
        ]

    def written(self) -> HashRowsWritten:
        """The flags as ``HashRowsWritten``."""
        return HashRowsWritten(self.flags == ord("1"), self.refused)


@dataclass
class _Lane:
    """One node: a pooled connection, the calls still to send, the calls awaiting replies."""

    pool: Any
    connection: Any
    calls: deque[tuple[npt.NDArray[np.intp], bool]]
    """Calls to send: their entities, and whether by SHA (else with the script's source)."""
    waiting: deque[tuple[npt.NDArray[np.intp], bool]] = field(default_factory=deque)


def write_hash_rows_to_redis(
    client: redis.Redis | redis.RedisCluster,
    rows: HashRows,
    *,
    keys_per_call: int = DEFAULT_KEYS_PER_CALL,
    in_flight: int = DEFAULT_IN_FLIGHT,
) -> SentHashRows:
    """Send ``rows`` (see the module docstring); redis-py's errors pass through untranslated."""
    group = rows.group
    keys = feature_keys(group.entity.key_name, rows.entity_ids, group.name)
    arguments = _per_key_arguments(rows)
    per_call = _keys_per_call(keys, arguments, keys_per_call)
    sent = SentHashRows(rows)
    tail = [0, group.ttl // timedelta(milliseconds=1), len(rows.fields)]
    heads = {
        True: ["EVALSHA", HASH_WRITE_MANY.sha, *tail],
        False: ["EVAL", HASH_WRITE_MANY.source, *tail],
    }
    lanes = _lanes(client, keys, per_call)
    try:
        while any(lane.calls or lane.waiting for lane in lanes):
            for lane in lanes:
                while lane.calls and len(lane.waiting) < in_flight:
                    call, by_sha = lane.calls.popleft()
                    lane.connection.send_packed_command(
                        [_packed(heads[by_sha], rows.fields, call, keys, arguments)]
                    )
                    lane.waiting.append((call, by_sha))
            for lane in lanes:
                if lane.waiting:
                    _receive(lane, sent)
    finally:
        for lane in lanes:
            if lane.waiting:
                lane.connection.disconnect()
            lane.pool.release(lane.connection)
    return sent


def _receive(lane: _Lane, sent: SentHashRows) -> None:
    """Read the reply to ``lane``'s oldest call waiting."""
    call, _ = lane.waiting.popleft()
    try:
        reply = lane.connection.read_response()
    except redis.exceptions.NoScriptError:
        # The node does not have the script (yet): this call again as EVAL, which caches it.
        lane.calls.appendleft((call, False))
        return
    except redis.exceptions.ResponseError as exc:
        if str(exc).split(" ", 1)[0] not in _REDIRECTS:
            raise
        sent.redirected += call.tolist()
        return
    flags, *problems = reply
    sent.flags[call] = np.frombuffer(flags, dtype=np.uint8).reshape(len(call), -1)
    for position, answer in zip(problems[::2], problems[1::2], strict=True):
        index = int(call[position - 1])
        if answer.startswith(b"!"):
            sent.refused[index] = f"Redis refused the write: {answer[1:].decode()}"
        else:
            if not any(word in answer for word in _NOT_HERE):
                raise redis.exceptions.ResponseError(answer[1:].decode())
            sent.redirected.append(index)


def _per_key_arguments(rows: HashRows) -> npt.NDArray[np.object_]:
    """E x (1 + n): each key's event times (one number, or one per field) and values."""
    differs = (rows.value_ms != rows.event_ms[:, None]).any(axis=1)
    arguments = np.empty((len(rows), 1 + len(rows.fields)), dtype=object)
    arguments[:, 0] = rows.event_ms.astype(str)
    for index in np.flatnonzero(differs).tolist():
        arguments[index, 0] = ",".join(rows.value_ms[index].astype(str).tolist())
    arguments[:, 1:] = rows.texts
    return arguments


def _keys_per_call(keys: list[str], arguments: npt.NDArray[np.object_], most: int) -> int:
    """``most``, or fewer if that many keys' arguments would pass ``CALL_BYTES``."""
    if not keys:
        return most
    sample = arguments[: min(len(keys), 64)]
    per_key = sum(len(text) + 8 for text in sample.ravel().tolist()) / len(sample) + len(keys[0])
    return max(1, min(most, int(CALL_BYTES // per_key)))


def _packed(
    head: list[Any],
    fields: Sequence[str],
    call: npt.NDArray[np.intp],
    keys: list[str],
    arguments: npt.NDArray[np.object_],
) -> bytes:
    command = [*head, len(call), *fields, *(keys[i] for i in call.tolist())]
    command += arguments[call].ravel().tolist()
    packed: bytes = hiredis.pack_command(tuple(command))
    return packed


def _calls(
    indexes: npt.NDArray[np.intp], per_call: int
) -> deque[tuple[npt.NDArray[np.intp], bool]]:
    starts = range(0, len(indexes), per_call)
    return deque((indexes[start : start + per_call], True) for start in starts)


def _lanes(client: redis.Redis | redis.RedisCluster, keys: list[str], per_call: int) -> list[_Lane]:
    if not isinstance(client, redis.RedisCluster):
        pool = client.connection_pool
        return [_Lane(pool, pool.get_connection(), _calls(np.arange(len(keys)), per_call))]
    # Each key's slot (the keys are ASCII text), then each distinct slot's node: a key costs
    # one C call, not the cluster client's encoding and slot-map lookup.
    slots = np.fromiter((key_slot(key.encode()) for key in keys), dtype=np.intp, count=len(keys))
    distinct, slot_of_key = np.unique(slots, return_inverse=True)
    nodes = [client.nodes_manager.get_node_from_slot(int(slot)) for slot in distinct.tolist()]
    names = sorted({node.name for node in nodes})
    node_of_slot = np.array([names.index(node.name) for node in nodes], dtype=np.intp)
    node_of_key = node_of_slot[slot_of_key.reshape(-1)]
    by_name = {node.name: node for node in nodes}
    lanes: list[_Lane] = []
    try:
        for number, name in enumerate(names):
            pool = client.get_redis_connection(by_name[name]).connection_pool
            calls = _calls(np.flatnonzero(node_of_key == number), per_call)
            lanes.append(_Lane(pool, pool.get_connection(), calls))
    except BaseException:
        for lane in lanes:
            lane.pool.release(lane.connection)
        raise
    return lanes
