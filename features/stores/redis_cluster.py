"""The Redis store on a Redis Cluster: one pipelined round trip per node, every node at once.

A read of N entities x M groups sorts its commands by the node that serves
each key's slot (all of an entity's keys share one slot: the id is their
hash tag), sends each node its commands in one write, packed as the
standalone store packs them, and waits for every node at once, each for at
most ``node_timeout_s``.  The factory sets that below the resolver's
deadline, so the healthy nodes' answers arrive in time when one node hangs.

- ``MOVED`` (the slot has a new owner: resharding, or a failover the client
  has not seen yet): the slot map takes the new owner from the reply, a full
  refresh starts in the background, and the request is sent once more.
- ``ASK`` (the slot is migrating and this key has left already): the request
  is sent once more to the node named, after ``ASKING`` on the same connection.
- A node that fails (refused, reset, no reply within ``node_timeout_s``)
  costs only its own requests: they are answered ``FailedRead`` with the
  reason (``store_error``, ``deadline``; ``breaker_open`` once its breaker
  skips it; see ``features.stores.base``), so the resolver falls back for
  those entities alone.  The wait is a ``features.deadline.ReplyDeadline``:
  a reply that has arrived is used however late a busy worker gets to it,
  and a connection left mid-reply is closed.  The node's breaker counts
  the failure and, after a run of them, skips the node for a while; the
  slot map is refreshed in the background (at most every
  ``REFRESH_INTERVAL_S``), which finds the replica the cluster promotes in
  its place.  A node that refuses its slots for now (``CLUSTERDOWN``,
  ``TRYAGAIN``, ``LOADING``, ``MASTERDOWN``) fails its requests the same
  way.  With ``read_from_replicas``, a replica that fails is replaced by its
  primary for the one retry.

Why not redis-py's ``ClusterPipeline`` for reads: it resolves a command
policy and a slot per queued command in Python (``bench/cluster_bench.py``
measures it against this store), and one node's connection error fails the
whole pipeline, so every entity would fall back.  redis-py still owns the
slot map (``NodesManager``), each node's connections, connecting (with
``READONLY`` for replica reads) and the hiredis reply parser.

Writes are the standalone store's, inherited (``WriteOutcome`` per update,
field-level merge, data errors refused per update, the rest raised): a
cluster client's ``pipeline()`` sends each node its share of a chunk
concurrently and re-sends redirected commands, and the calls a node answers
``NOSCRIPT`` (a promoted replica, a restarted node) are sent again as
``EVAL``, which leaves the script in that node's cache.  Every script names
keys of one slot only, since every key of an entity group carries the
entity's hash tag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY, REPLICA, LoadBalancingStrategy
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry as SyncRetry

from features.breaker import CircuitBreaker, Permit
from features.burst_log import BurstLog
from features.deadline import ReplyDeadline
from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.sources import Degraded
from features.stores.base import (
    FailedRead,
    FeatureUpdate,
    ReadAnswer,
    ReadRequest,
    WriteOutcome,
)
from features.stores.redis import (
    AsyncRedisStore,
    decode_replies,
    fold_replies,
    read_commands,
    read_reply,
    translated_errors,
)
from features.stores.redis_memory import INFO_SECTIONS, MemoryReport, memory_report
from features.timing import Stage, StageTimer

__all__ = [
    "REFRESH_INTERVAL_S",
    "AsyncRedisClusterStore",
    "async_cluster_client",
    "cluster_client",
]

_log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 0.5
"""The least time between two background refreshes of the slot map."""

REFRESH_TIMEOUT_S = 2.0
"""How long one load of the slot map may take: at start-up (``warm``), or in the background."""

_NODE_REFUSALS = (ClusterDownError, TryAgainError, BusyLoadingError)
"""Error replies by which a node refuses every key of its slots for now (``CLUSTERDOWN``,
``MASTERDOWN``, ``TRYAGAIN``, ``LOADING``): the node failed, not the key."""

_ASKING = hiredis.pack_command(("ASKING",))

_Batches = dict[ClusterNode, list[int]]
"""Request indexes by the node they go to."""


class AsyncRedisClusterStore(AsyncRedisStore):
    """The Redis store over an asyncio ``RedisCluster``; the factory builds it.

    ``pool_size`` is each node's pool; every read holds at most one connection
    per node, so reads in flight over ``pool_size`` is the share of the fullest
    node's pool in use (``pool_usage``).
    """

    def __init__(
        self,
        client: RedisCluster,
        timeout_s: float,
        node_timeout_s: float,
        pool_size: int,
        read_from_replicas: bool = False,
        breaker_failures: int = 5,
        breaker_reset_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Not AsyncRedisStore.__init__: a cluster has a pool per node, not one pool.  The
        # write path it lends needs only ``_client.pipeline`` and ``_timeout_s``, which a
        # cluster client has in the same shape.
        self._client = client  # type: ignore[assignment]
        self._cluster = client
        self._timeout_s = timeout_s
        self._node_timeout_s = node_timeout_s
        self._pool_size = pool_size
        self._reads_in_flight = 0
        self._reads_peak = 0
        self._read_from_replicas = read_from_replicas
        self._breaker_failures = breaker_failures
        self._breaker_reset_s = breaker_reset_s
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._next_replica: dict[str, int] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_INTERVAL_S
        self._ready = False
        self._starting: asyncio.Task[RedisCluster] | None = None
        self._error_log = BurstLog(_log)

    @property
    def _nodes(self) -> NodesManager:
        return self._cluster.nodes_manager

    def pool_usage(self) -> float:
        """The share of the fullest node's pool that reads hold right now (0 to 1), at most."""
        return self._reads_in_flight / self._pool_size

    def take_peak_connections(self) -> int:
        """The most reads in flight at once since the last call (each holds at most one
        connection per node: the busiest node's connections held, at most); see
        ``AsyncRedisStore.take_peak_connections``."""
        peak, self._reads_peak = self._reads_peak, self._reads_in_flight
        return peak

    async def warm(self, count: int) -> int:
        """Load the slot map, then open up to ``count`` connections to each node reads go to
        (the primaries, or with replica reads the replicas) and keep them; how many are open.

        Meant for start-up: loading the slot map takes longer than a feature deadline, and
        no request's deadline should pay for connecting.  Failures are logged, not raised:
        reads fall back until the cluster answers.
        """
        try:
            with translated_errors():
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    await self._ensure_ready()
        except StoreError as exc:
            _log.warning("the Redis Cluster slot map did not load at start-up: %s", exc)
            return 0
        nodes = self._nodes.get_nodes_by_server_type(PRIMARY)
        if self._read_from_replicas:
            nodes = self._nodes.get_nodes_by_server_type(REPLICA) or nodes
        wanted = min(count, self._pool_size)
        opened = await asyncio.gather(*(_open_connections(node, wanted) for node in nodes))
        if sum(opened) < wanted * len(nodes):
            _log.warning(
                "opened %d of %d Redis Cluster connections at start-up; the rest open on first use",
                sum(opened),
                wanted * len(nodes),
            )
        return sum(opened)

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[ReadAnswer]:
        """Values for each request, in order: one round trip per node, all nodes at once.

        A request whose node failed is answered ``FailedRead`` with the reason;
        ``StoreError`` only when the slot map cannot be loaded at all.
        """
        if not requests:
            return []
        self._reads_in_flight += 1
        if self._reads_in_flight > self._reads_peak:
            self._reads_peak = self._reads_in_flight
        try:
            if timer is None:
                replies = await self._round_trips(requests)
            else:
                with timer.stage(Stage.REDIS):
                    replies = await self._round_trips(requests)
        finally:
            self._reads_in_flight -= 1
        answered = [i for i, reply in enumerate(replies) if not isinstance(reply, FailedRead)]
        if len(answered) == len(requests):
            return decode_replies(requests, replies, timer)
        answers: list[ReadAnswer] = list(replies)
        decoded = decode_replies(
            [requests[i] for i in answered], [replies[i] for i in answered], timer
        )
        for index, values in zip(answered, decoded, strict=True):
            answers[index] = values
        return answers

    async def _round_trips(self, requests: Sequence[ReadRequest]) -> list[Any]:
        """Every request's reply, or ``FailedRead`` where its node failed."""
        await self._ensure_ready()
        replies: list[Any] = [None] * len(requests)
        batches = self._batches(requests, range(len(requests)), replies, replicas_allowed=True)
        on_primaries = await self._send(batches, requests, replies, asking=False)
        await self._retry_once(requests, replies, on_primaries)
        return replies

    async def _ensure_ready(self) -> None:
        """Load the slot map (and redis-py's command table) once, in a task of its own.

        It takes longer than a short deadline allows (``COMMAND`` is a large reply), and
        redis-py drops a half-done start: were it cancelled with each request, the store
        would never start.  Shielded, it completes while those first requests fall back.
        """
        if self._ready:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._cluster.initialize())
            # A start nobody waits for any more must not log "exception never retrieved".
            self._starting.add_done_callback(_retrieve)
        with translated_errors():
            await asyncio.shield(self._starting)
        self._ready = True

    async def _retry_once(
        self, requests: Sequence[ReadRequest], replies: list[Any], on_primaries: list[int]
    ) -> None:
        """Send again, once, what was redirected (``MOVED``, ``ASK``) and what a replica failed
        to answer (``on_primaries``, sent to their primaries)."""
        moved = on_primaries
        asked: _Batches = {}
        for index, reply in enumerate(replies):
            if isinstance(reply, _NODE_REFUSALS):
                # The node refuses its slots for now (no primary, a migration, loading):
                # a failure to fall back from, not an absent entity.
                replies[index] = _refused(reply)
                self._refresh_soon()
            elif isinstance(reply, MovedError):
                await self._nodes.move_slot(reply)
                moved.append(index)
            elif isinstance(reply, AskError):
                host, port = self._nodes.remap_host_port(reply.host, reply.port)
                node = self._nodes.get_node(host=host, port=port)
                if node is None:
                    replies[index] = FailedRead(
                        f"ASK to an unknown node: {reply}", Degraded.STORE_ERROR
                    )
                else:
                    asked.setdefault(node, []).append(index)
        if moved:
            self._refresh_soon()
            batches = self._batches(requests, moved, replies, replicas_allowed=False)
            await self._send(batches, requests, replies, asking=False)
        if asked:
            await self._send(asked, requests, replies, asking=True)
        for index in (*moved, *(i for indexes in asked.values() for i in indexes)):
            reply = replies[index]
            if isinstance(reply, (AskError, *_NODE_REFUSALS)):  # redirected twice, or refused
                replies[index] = _refused(reply)

    def _batches(
        self,
        requests: Sequence[ReadRequest],
        indexes: Iterable[int],
        replies: list[Any],
        replicas_allowed: bool,
    ) -> _Batches:
        """The requests at ``indexes`` by the node that serves their entity's slot now."""
        slots_cache = self._nodes.slots_cache
        batches: _Batches = {}
        by_entity: dict[str, ClusterNode | None] = {}
        for index in indexes:
            entity_id = requests[index].entity_id
            if entity_id in by_entity:
                node = by_entity[entity_id]
            else:
                # The id is the keys' hash tag, and ids hold no braces: its slot is the keys'.
                shard = slots_cache.get(key_slot(entity_id.encode()))
                node = (self._pick(shard) if replicas_allowed else shard[0]) if shard else None
                by_entity[entity_id] = node
            if node is None:
                replies[index] = FailedRead("no node serves the slot", Degraded.STORE_ERROR)
                self._refresh_soon()
            else:
                batches.setdefault(node, []).append(index)
        return batches

    def _pick(self, shard: list[ClusterNode]) -> ClusterNode:
        """The shard's primary, or with replica reads its replicas in turn."""
        if not self._read_from_replicas or len(shard) < 2:
            return shard[0]
        turn = self._next_replica.get(shard[0].name, 0)
        self._next_replica[shard[0].name] = turn + 1
        return shard[1 + turn % (len(shard) - 1)]

    async def _send(
        self, batches: _Batches, requests: Sequence[ReadRequest], replies: list[Any], asking: bool
    ) -> list[int]:
        """One round trip per node, all at once; the replies land at their requests' indexes.

        Returns the indexes a replica failed to answer, for their primaries to answer.
        """
        if len(batches) == 1:
            [(node, indexes)] = batches.items()
            outcomes = [await self._node_round_trip(node, indexes, requests, asking)]
        else:
            outcomes = await asyncio.gather(
                *(
                    self._node_round_trip(node, indexes, requests, asking)
                    for node, indexes in batches.items()
                )
            )
        to_primaries: list[int] = []
        for (node, indexes), outcome in zip(batches.items(), outcomes, strict=True):
            if not isinstance(outcome, FailedRead):
                for index, reply in zip(indexes, outcome, strict=True):
                    replies[index] = reply
                continue
            for index in indexes:
                replies[index] = outcome
            if node.server_type == REPLICA:
                to_primaries += indexes
        return to_primaries

    async def _node_round_trip(
        self, node: ClusterNode, indexes: list[int], requests: Sequence[ReadRequest], asking: bool
    ) -> list[Any] | FailedRead:
        """One node's replies in order, or why there are none (its requests fail, not the read).

        The wait is a ``ReplyDeadline``: a reply that has arrived is used, however late the
        worker gets to it.  A connection left mid-reply is closed, so that no later read on
        it sees this one's replies.
        """
        breaker = self._breaker(node)
        permit = breaker.allow()
        if permit is None:
            self._refresh_soon(node.name)
            return FailedRead(f"Redis node {node.name} is skipped for now", Degraded.BREAKER_OPEN)
        batch = [requests[i] for i in indexes]
        # hiredis' stub types the argument as a one-element tuple; it takes any length.
        commands = [hiredis.pack_command(c) for r in batch for c in read_commands(r)]  # type: ignore[arg-type]
        if asking:
            commands = [part for command in commands for part in (_ASKING, command)]
        try:
            connection = node.acquire_connection()
        except MaxConnectionsError:
            # Our pool is exhausted, not the node: no breaker failure.
            return FailedRead(f"no free connection to Redis node {node.name}", Degraded.STORE_ERROR)
        bound = ReplyDeadline(asyncio.get_running_loop().time() + self._node_timeout_s)
        replies: list[Any] = []
        try:
            with translated_errors():
                async with bound:
                    await node.disconnect_if_needed(connection)
                    await connection.send_packed_command(b"".join(commands), check_health=False)
                    for _ in commands:
                        replies.append(await read_reply(connection))
        except StoreError as exc:
            reason = Degraded.DEADLINE if bound.expired() else Degraded.STORE_ERROR
            return self._node_failed(node, breaker, permit, reason, exc)
        finally:
            if len(replies) < len(commands):
                await connection.disconnect(nowait=True)
            node.release(connection)
        breaker.record_success(permit)
        return fold_replies(batch, replies[1::2] if asking else replies)

    def _node_failed(
        self,
        node: ClusterNode,
        breaker: CircuitBreaker,
        permit: Permit,
        reason: Degraded,
        exc: StoreError,
    ) -> FailedRead:
        # The breaker keeps a category (exc.reason); the log gets the node and the error.
        breaker.record_failure(permit, exc.reason)
        self._error_log.error(f"Redis node {node.name} failed; its entities fall back", exc)
        if reason is Degraded.STORE_ERROR:
            # Refused or reset: the node may be gone for good.  A node that is only slow
            # leads to a refresh once its breaker opens.
            self._refresh_soon(node.name)
        return FailedRead(f"Redis node {node.name}: {exc}", reason)

    def _breaker(self, node: ClusterNode) -> CircuitBreaker:
        breaker = self._breakers.get(node.name)
        if breaker is None:
            breaker = CircuitBreaker(
                node.name, self._breaker_failures, self._breaker_reset_s, self._clock
            )
            self._breakers[node.name] = breaker
        return breaker

    DOWN = "not every primary answers (their entities are served from fallbacks)"
    """What the status page says when ``ping`` fails: some primary does not answer."""

    def node_breakers(self) -> dict[str, CircuitBreaker]:
        """Each node's breaker, for the status page, by the node's role and the slots it
        serves (``primary 0-5460``): what an operator needs to find it, and no address."""
        labelled: dict[str, CircuitBreaker] = {}
        for name, breaker in self._breakers.items():
            label = _label(name, self._nodes.slots_cache)
            # Nodes that serve no slot now (a primary lost in a failover) share a label.
            labelled[label if label not in labelled else f"{label} ({len(labelled) + 1})"] = breaker
        return labelled

    def _refresh_soon(self, failed_node: str | None = None) -> None:
        """Refresh the slot map in the background, unless one ran or runs just now."""
        now = self._clock()
        if self._refresh is not None and not self._refresh.done():
            return
        if now - self._refreshed_at < REFRESH_INTERVAL_S:
            return
        self._refreshed_at = now
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_slots(failed_node))

    async def _refresh_slots(self, failed_node: str | None) -> None:
        """Load the slot map again if a node says it changed.

        ``NodesManager.initialize`` marks every connection for reconnecting, so it runs
        only when the map did change, not on every failure of a node that stays down.
        """
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                if await self._slot_map_changed(failed_node):
                    await self._nodes.initialize(last_failed_node_name=failed_node)
        except (RedisError, OSError, TimeoutError) as exc:
            self._error_log.error("refreshing the Redis Cluster slot map failed", exc)

    async def _slot_map_changed(self, failed_node: str | None) -> bool:
        """Whether the first node that answers ``CLUSTER SLOTS`` disagrees with our map
        (or nobody answers, when only a full refresh can tell)."""
        nodes = sorted(self._nodes.nodes_cache.values(), key=lambda n: n.name == failed_node)
        for node in nodes:
            try:
                async with asyncio.timeout(self._timeout_s):
                    ranges = await node.execute_command("CLUSTER SLOTS")
            except (RedisError, OSError, TimeoutError):
                continue
            return _differs(ranges, self._nodes.slots_cache)
        return True

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``RedisStore.write``; a failure also refreshes the slot map, so that writes
        reach a promoted replica once the cluster has promoted one."""
        try:
            return await super().write(updates)
        except (StoreUnavailable, StoreTimeout):
            self._refresh_soon()
            raise

    async def ping(self) -> bool:
        """Whether every primary answers a PING now.

        Each primary is asked on its own connection rather than through
        ``RedisCluster.ping``, which after a failure makes the client's next
        command reload the slot map (reconnecting every connection).
        """
        try:
            with translated_errors():
                async with asyncio.timeout(self._timeout_s):
                    await self._ensure_ready()
                    primaries = self._nodes.get_nodes_by_server_type(PRIMARY)
                    answers = await asyncio.gather(
                        *(node.execute_command("PING") for node in primaries)
                    )
        except StoreError:
            return False
        return all(answers)

    async def memory(self) -> list[MemoryReport]:
        """How full each primary is (``INFO memory stats``), labelled as ``node_breakers``
        labels nodes; ``StoreError`` when one cannot say."""
        with translated_errors():
            async with asyncio.timeout(self._timeout_s):
                await self._ensure_ready()
                primaries = self._nodes.get_nodes_by_server_type(PRIMARY)
                infos = await asyncio.gather(
                    *(node.execute_command("INFO", *INFO_SECTIONS) for node in primaries)
                )
        return [
            memory_report(_label(node.name, self._nodes.slots_cache), info)
            for node, info in zip(primaries, infos, strict=True)
        ]

    async def close(self) -> None:
        """Close every node's connections."""
        for task in (self._refresh, self._starting):
            if task is not None:
                task.cancel()
        await self._cluster.aclose()


def _refused(reply: Exception) -> FailedRead:
    return FailedRead(f"Redis refused the slot for now: {reply}", Degraded.STORE_ERROR)


async def _open_connections(node: ClusterNode, count: int) -> int:
    """Open up to ``count`` connections to ``node`` and leave them in its pool; how many."""
    connections = []
    try:
        for _ in range(count):
            connections.append(node.acquire_connection())
    except MaxConnectionsError:
        pass
    outcomes = await asyncio.gather(
        *(connection.connect() for connection in connections), return_exceptions=True
    )
    for connection in connections:
        node.release(connection)
    return sum(1 for outcome in outcomes if not isinstance(outcome, BaseException))


def _label(name: str, slots_cache: dict[int, list[ClusterNode]]) -> str:
    """``primary 0-5460`` (or ``replica``, or ``node`` when it serves no slot now)."""
    ranges: list[list[int]] = []
    role = "node"
    for slot, nodes in sorted(slots_cache.items()):
        names = [node.name for node in nodes]
        if name not in names:
            continue
        role = "primary" if names[0] == name else "replica"
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1][1] = slot
        else:
            ranges.append([slot, slot])
    spans = ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges)
    return f"{role} {spans}".strip()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _differs(ranges: list[Any], slots_cache: dict[int, list[ClusterNode]]) -> bool:
    """Whether ``CLUSTER SLOTS`` (ranges of [start, end, primary, *replicas]) maps any slot
    to other nodes than ``slots_cache`` does."""
    covered = 0
    for start, end, *nodes in ranges:
        names = [f"{_text(host)}:{port}" for host, port, *_ in nodes]
        cached = slots_cache.get(int(start))
        if cached is None or [node.name for node in cached] != names:
            return True
        covered += int(end) - int(start) + 1
    return covered != len(slots_cache)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def async_cluster_client(
    url: str,
    pool_size: int,
    connect_timeout_s: float,
    read_from_replicas: bool,
    address_remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None,
) -> RedisCluster:
    """An asyncio cluster client built as the standalone one is: no socket timeout (the store
    bounds each round trip itself), no retries, nothing sent on connect but ``READONLY`` for
    replica reads; it starts even when a shard is down (``require_full_coverage=False``).

    ``address_remap`` maps the addresses the nodes announce to where they are reachable
    (a NAT, or the tests' proxies)."""
    return RedisCluster.from_url(
        url,
        protocol=2,
        driver_info=None,
        socket_timeout=None,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=pool_size,
        require_full_coverage=False,
        load_balancing_strategy=(
            LoadBalancingStrategy.ROUND_ROBIN_REPLICAS if read_from_replicas else None
        ),
        address_remap=address_remap,
    )


class _ClosingRedisCluster(SyncRedisCluster):
    """redis-py's blocking ``RedisCluster.close()`` leaves every node's pool connected (the
    nodes' clients do not own their pools): this one disconnects them too."""

    def close(self) -> None:
        # Called through redis-py's class: mypy's untyped_calls_exclude (redis-py leaves the
        # method unannotated) recognises the method by the class it is looked up on.
        SyncRedisCluster.disconnect_connection_pools(self)
        super().close()


def cluster_client(url: str, socket_timeout_s: float, connect_timeout_s: float) -> SyncRedisCluster:
    """A blocking cluster client for tools: fail-fast timeouts and no retries, as the
    standalone one; it starts even when a shard is down."""
    return _ClosingRedisCluster.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=SyncRetry(NoBackoff(), 0),
        require_full_coverage=False,
    )
