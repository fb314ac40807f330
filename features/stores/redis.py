"""The Redis online store: every read is one pipelined round trip.

A read of N entities x M groups sends the commands each group's structure
reads with (``codecs``: one ``HMGET`` for a hash, one ``ZREVRANGE ...
WITHSCORES`` for a sorted set, two ``GET`` for a blob), together in one
write, so every answer carries its event time (``StoredRow.event_ms``).  The blocking
store (tools, tests) queues them on a ``pipeline(transaction=False)``.  The
service's asyncio store packs them with ``hiredis.pack_command`` and sends
and reads them on one of redis-py's pooled connections, under one timeout
for the whole round trip: a fraction of what redis-py's asyncio ``Pipeline``
spends (its pure-Python packer and a timeout per reply), and less than a
plain ``hmget`` for one entity (docs/benchmarks.md, "What was changed";
``bench/resolver_bench.py`` measures both).  redis-py still owns the pool,
connecting, the hiredis reply parser and disconnecting a connection left
mid-reply.  Replies come back as ``StoredRow``s, decoded by the codecs;
``hash_columns.MIN_REPLIES`` or more complete hash replies of one group are
decoded in bulk, the rest value by value.  The stores are built fail-fast (short read and connect
timeouts from the settings, no retries, a bounded pool that refuses rather
than queues), since redis-py's defaults (no read timeout, retries) would
spend a whole latency budget on one sick connection; ``async_redis_store``
says why the asyncio one applies its timeout itself rather than through
redis-py's socket timeout.  redis-py errors are translated into
``StoreError`` leaves here and nowhere else.

An error reply to one command (``WRONGTYPE``, ``NOPERM``, ``LOADING``, ``MOVED``,
``BUSY``, ``OOM``, ...) is that request's answer, a ``FailedRead`` naming the
error: never "nothing stored".  Connections are kept: the service opens some
at start-up (``AsyncRedisStore.warm``), and a read whose caller stops waiting
(the resolver's deadline) leaves its connection to a background task that reads
the rest of the replies, within the read's own timeout, and returns it to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import hiredis
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.breaker import CircuitBreaker
from features.deadline import ReplyDeadline
from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.settings import Settings
from features.stores.base import (
    FeatureUpdate,
    ReadAnswer,
    ReadRequest,
    WriteOutcome,
)
from features.stores.codecs import Command, ScriptCall, codec_of, decode_reply
from features.stores.hash_columns import MIN_REPLIES, decode_hash_columns
from features.stores.hash_rows import HashRows, HashRowsWritten
from features.stores.redis_hash_rows import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_KEYS_PER_CALL,
    write_hash_rows_to_redis,
)
from features.stores.redis_memory import INFO_SECTIONS, MemoryReport, memory_report
from features.stores.redis_scripts import (
    DATA_ERRORS,
)
from features.timing import Stage, StageTimer

__all__ = [
    "AsyncRedisStore",
    "RedisStore",
    "async_redis_store",
    "call_timeout_s",
    "client_options",
    "decode_replies",
    "fold_replies",
    "read_commands",
    "read_reply",
    "sync_client",
    "translated_errors",
]

_log = logging.getLogger(__name__)

WRITE_CHUNK_ROWS = 1000
"""Most updates per pipelined write round trip."""

WRITE_CHUNK_BYTES = 1 << 20
"""Most argument bytes per pipelined write round trip, whatever the number of updates."""

_TRANSIENT_REPLIES = ("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "LOADING")
"""First words of error replies that say "not now" (a failover, a busy or loading server)."""


def call_timeout_s(settings: Settings, for_writes: bool) -> float:
    """How long one call may take, in seconds: a read round trip, or a chunk of writes."""
    timeout_ms = settings.redis_write_timeout_ms if for_writes else settings.redis_socket_timeout_ms
    return timeout_ms / 1000.0


def client_options(
    settings: Settings, socket_timeout_s: float | None, *, for_asyncio: bool
) -> dict[str, Any]:
    """redis-py client options for failing fast: the timeouts, no retries, a bounded pool.

    ``for_asyncio`` picks the retry policy's kind: an asyncio client takes
    ``redis.asyncio.retry.Retry``, a blocking one ``redis.retry.Retry`` (redis-py 8.2
    converts a blocking policy handed to an asyncio client, with a warning).
    """
    retry = AsyncRetry(NoBackoff(), 0) if for_asyncio else Retry(NoBackoff(), 0)
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_ms / 1000.0,
        "retry": retry,
        "retry_on_timeout": False,
        "max_connections": settings.redis_pool_size,
    }


def async_redis_store(settings: Settings, for_writes: bool = False) -> AsyncRedisStore:
    """A fail-fast asyncio store for the service; ``for_writes`` waits the write timeout.

    Its client has no socket timeout: the store bounds each call itself, a read
    with a ``features.deadline.ReplyDeadline`` (which never discards a reply that
    has arrived, however busy the worker), writes and pings with
    ``asyncio.timeout``.  With a socket timeout redis-py sends under
    ``asyncio.wait_for``, which on Python 3.11 returns normally when the caller
    is cancelled just as the send completes, so the resolver's deadline was lost
    and the read waited on past it (``make faults`` showed it after a Redis restart;
    docs/benchmarks.md has the figures).
    """
    if not settings.redis_url:
        raise StoreError("REDIS_URL is not set")
    client = redis.asyncio.Redis.from_url(
        settings.redis_url,
        # Nothing is sent on connect (no HELLO, no CLIENT SETINFO): a connect that the
        # deadline cancels cannot leave a reply behind for the next command to read.
        protocol=2,
        driver_info=None,
        **client_options(settings, None, for_asyncio=True),
    )
    return AsyncRedisStore(client, call_timeout_s(settings, for_writes))


def sync_client(settings: Settings, for_writes: bool = False) -> redis.Redis:
    """A fail-fast blocking client for tools and tests; ``for_writes`` waits the write timeout."""
    if not settings.redis_url:
        raise StoreError("REDIS_URL is not set")
    return redis.Redis.from_url(
        settings.redis_url,
        **client_options(settings, call_timeout_s(settings, for_writes), for_asyncio=False),
    )


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn redis-py's exceptions into ours, once, at the boundary."""
    try:
        yield
    except redis.exceptions.TimeoutError as exc:
        raise StoreTimeout(f"Redis did not answer in time: {exc}") from exc
    except redis.exceptions.ConnectionError as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
    except (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError) as exc:
        raise StoreUnavailable(f"Redis cannot take writes now: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        if str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES:
            raise StoreUnavailable(f"Redis cannot answer now: {exc}") from exc
        raise StoreError(f"Redis failed: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"Redis failed: {exc}") from exc
    except TimeoutError as exc:
        raise StoreTimeout("Redis did not answer in time") from exc
    except OSError as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
    except RuntimeError as exc:
        # uvloop reports a write to a transport that a reset closed as RuntimeError,
        # which redis-py passes through untranslated.
        raise StoreUnavailable(f"Redis connection closed: {exc}") from exc


def read_commands(request: ReadRequest) -> tuple[Command, ...]:
    """The commands that read one request, its values and their event time together
    (``StructureCodec.read_commands``); ``fold_replies`` puts the replies back together,
    one per request."""
    group = request.group
    key = feature_key(group.entity.key_name, request.entity_id, group.name)
    return codec_of(group).read_commands(key, request)


def fold_replies(requests: Sequence[ReadRequest], replies: Sequence[Any]) -> list[Any]:
    """One reply per request from the replies to every request's ``read_commands``, in order
    (``StructureCodec.folded``)."""
    if len(replies) == len(requests):
        return list(replies)
    folded: list[Any] = []
    start = 0
    for request in requests:
        codec = codec_of(request.group)
        end = start + codec.replies_per_read
        folded.append(codec.folded(replies[start:end]))
        start = end
    return folded


def decode_replies(
    requests: Sequence[ReadRequest], replies: Sequence[Any], timer: StageTimer | None
) -> list[ReadAnswer]:
    """Each request's answer from its reply (an error reply: ``FailedRead``), timed as
    ``decode``."""
    if timer is None:
        return _decoded(requests, replies)
    with timer.stage(Stage.DECODE):
        return _decoded(requests, replies)


def _decoded(requests: Sequence[ReadRequest], replies: Sequence[Any]) -> list[ReadAnswer]:
    """Complete hash replies (every field and ``_event_ms`` held) of one (group, fields) in
    bulk when there are enough of them (``hash_columns``); everything else, and any bulk that
    declines, value by value."""
    decoded: list[ReadAnswer] = [None] * len(requests)
    # By identity: a resolver's requests share one (group, fields) pair of objects per group,
    # alive for this call; equal pairs that are distinct objects are decoded apart, as well.
    complete_hashes: dict[tuple[int, int], list[int]] = {}
    for index, (request, reply) in enumerate(zip(requests, replies, strict=True)):
        complete = isinstance(reply, list) and None not in reply
        if complete and codec_of(request.group).decodes_in_bulk:
            complete_hashes.setdefault((id(request.group), id(request.fields)), []).append(index)
        else:
            decoded[index] = decode_reply(request, reply)
    for indexes in complete_hashes.values():
        first = requests[indexes[0]]
        in_bulk = (
            decode_hash_columns(first.group, first.fields, [replies[i] for i in indexes])
            if len(indexes) >= MIN_REPLIES
            else None
        )
        if in_bulk is None:
            for index in indexes:
                decoded[index] = decode_reply(requests[index], replies[index])
        else:
            for index, values in zip(indexes, in_bulk, strict=True):
                decoded[index] = values
    return decoded


_ERROR_REPLIES = (
    redis.exceptions.ResponseError,
    # Error replies that redis-py raises as connection errors (LOADING, NOAUTH, WRONGPASS);
    # they were read whole, so the connection is still in step.
    redis.exceptions.BusyLoadingError,
    redis.exceptions.AuthenticationError,
)


async def read_reply(connection: Any) -> Any:
    """The next reply on ``connection``; an error reply is returned, not raised.

    The connection is never closed here, whatever happens: the caller
    (``AsyncRedisStore``, the cluster store) decides whether to keep, drain or drop it.
    """
    try:
        # math.inf: no timeout per reply; the caller bounds the whole round trip.
        return await connection.read_response(timeout=math.inf, disconnect_on_error=False)
    except _ERROR_REPLIES as exc:
        return exc


def _script_call(update: FeatureUpdate) -> ScriptCall:
    """The write script call for ``update`` (``StructureCodec.script_call``)."""
    group = update.group
    key = feature_key(group.entity.key_name, update.entity_id, group.name)
    return codec_of(group).script_call(key, update, group.ttl // timedelta(milliseconds=1))


def _outcome(call: ScriptCall, reply: Any) -> WriteOutcome:
    """What one script reply says landed; a data error refuses the update, anything else raises."""
    if isinstance(reply, redis.exceptions.ResponseError):
        message = str(reply)
        if message.split(" ", 1)[0] in DATA_ERRORS:
            return WriteOutcome(refused=f"Redis refused the write: {message}")
        raise reply
    if isinstance(reply, Exception):
        raise reply
    # One character per name: "1" landed, "0" a newer value was held.
    landed = reply.decode() if isinstance(reply, bytes) else str(reply)
    return WriteOutcome(
        frozenset(name for name, flag in zip(call.names, landed, strict=True) if flag == "1")
    )


class _ChunkWrite:
    """One chunk of script calls, for both stores' write loops: sent by SHA, then by source
    (``EVAL``) for the calls whose script the server lacked (``NOSCRIPT``: a restart, a
    promoted replica), then read into one ``WriteOutcome`` per call."""

    def __init__(self, calls: Sequence[ScriptCall]) -> None:
        self._calls = calls
        self._replies: list[Any] = []
        self._missing: list[int] = []

    def by_source(self, replies: list[Any]) -> list[ScriptCall]:
        """Take the replies to the calls by SHA; the calls to send again by source."""
        self._replies = replies
        self._missing = [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]
        return [self._calls[i] for i in self._missing]

    def outcomes(self, resent: Sequence[Any]) -> list[WriteOutcome]:
        """Each call's outcome, with ``resent``, the replies to the calls sent again."""
        for index, reply in zip(self._missing, resent, strict=True):
            self._replies[index] = reply
        return [_outcome(c, r) for c, r in zip(self._calls, self._replies, strict=True)]


def _chunks(calls: Sequence[ScriptCall]) -> Iterator[Sequence[ScriptCall]]:
    """Calls in chunks of at most ``WRITE_CHUNK_ROWS`` calls and about ``WRITE_CHUNK_BYTES``."""
    start = size = 0
    for index, call in enumerate(calls):
        if index > start and (
            index - start >= WRITE_CHUNK_ROWS or size + call.size_bytes > WRITE_CHUNK_BYTES
        ):
            yield calls[start:index]
            start = index
            size = 0
        size += call.size_bytes
    if start < len(calls):
        yield calls[start:]


def _queue(pipe: Any, calls: Sequence[ScriptCall], by_sha: bool) -> None:
    # Through execute_command: a cluster pipeline refuses ``pipe.evalsha`` and its
    # ``pipe.eval`` takes no script; it routes EVAL and EVALSHA by their keys all the same.
    for call in calls:
        if by_sha:
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        else:
            pipe.execute_command("EVAL", call.script.source, len(call.keys), *call.keys, *call.args)


class RedisStore:
    """The Redis store over a blocking client (``sync_client``, or a cluster's or a sentinel's
    from ``factory.open_redis_client``: their pipelines work alike here)."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        *,
        keys_per_call: int = DEFAULT_KEYS_PER_CALL,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        self._client = client
        self._keys_per_call = keys_per_call
        self._in_flight = in_flight

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[ReadAnswer]:
        """Values for each request, in order, from one pipelined round trip."""
        if not requests:
            return []
        with translated_errors(), self._client.pipeline(transaction=False) as pipe:
            for request in requests:
                for command in read_commands(request):
                    pipe.execute_command(*command)
            if timer is None:
                replies = pipe.execute(raise_on_error=False)
            else:
                with timer.stage(Stage.REDIS):
                    replies = pipe.execute(raise_on_error=False)
        return decode_replies(requests, fold_replies(requests, replies), timer)

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``OnlineStore.write``; one round trip per chunk of updates (``_chunks``), one
        script call per update (``StructureCodec.script_call``)."""
        outcomes: list[WriteOutcome] = []
        calls = [_script_call(update) for update in updates]
        with translated_errors():
            for chunk in _chunks(calls):
                sent = _ChunkWrite(chunk)
                again = sent.by_source(self._execute(chunk, by_sha=True))
                outcomes += sent.outcomes(self._execute(again, by_sha=False) if again else [])
        return outcomes

    def write_hash_rows(self, rows: HashRows) -> HashRowsWritten:
        """See ``HashRowsStore``: many entities per script call, at most ``in_flight`` calls
        waiting per node (``redis_hash_rows``)."""
        with translated_errors():
            sent = write_hash_rows_to_redis(
                self._client, rows, keys_per_call=self._keys_per_call, in_flight=self._in_flight
            )
            if sent.redirected:
                if not isinstance(self._client, redis.RedisCluster):
                    raise StoreError("a standalone Redis answered a write with a redirect")
                self._client.nodes_manager.initialize()
                updates = rows.updates()
                outcomes = self.write([updates[index] for index in sent.redirected])
                for index, outcome in zip(sent.redirected, outcomes, strict=True):
                    sent.settle(index, outcome, rows)
        return sent.written()

    def _execute(self, calls: Sequence[ScriptCall], by_sha: bool) -> list[Any]:
        with self._client.pipeline(transaction=False) as pipe:
            _queue(pipe, calls, by_sha)
            return list(pipe.execute(raise_on_error=False))

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


class AsyncRedisStore:
    """The Redis store over an asyncio client, for the service; ``async_redis_store`` builds it.

    Every call is bounded by ``timeout_s`` as a whole (one round trip of a read,
    one chunk of a write, a ping).
    """

    def __init__(self, client: redis.asyncio.Redis, timeout_s: float) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._pool_size: int = self._pool.max_connections
        self._timeout_s = timeout_s
        self._held = 0
        self._held_peak = 0
        self._drains: set[asyncio.Task[None]] = set()

    @property
    def pool_size(self) -> int:
        """The most connections the pool opens (on a cluster: to each node)."""
        return self._pool_size

    def pool_usage(self) -> float:
        """The share of the connection pool that reads hold right now (0 to 1).

        A connection counts from the moment a read asks for it until it is back
        in the pool, its reply drained if the read was abandoned.
        """
        return self._held / self._pool_size

    def take_peak_connections(self) -> int:
        """The most connections reads held at once since the last call (as ``pool_usage``
        counts them), and start counting again from those held now.

        For a gauge sampled now and then: the peak between two samples, which a sample of
        the moment would miss.
        """
        peak, self._held_peak = self._held_peak, self._held
        return peak

    async def warm(self, count: int) -> int:
        """Open up to ``count`` connections now and keep them in the pool; how many are open.

        Each connect is bounded by the connect timeout.  Meant for start-up, so
        that no request's deadline pays for connecting: a connect costs at least
        one more network round trip, as much again as the read itself.
        """
        wanted = min(count, self._pool_size)
        opened = await asyncio.gather(
            *(self._pool.get_connection() for _ in range(wanted)), return_exceptions=True
        )
        failures = [outcome for outcome in opened if isinstance(outcome, BaseException)]
        for connection in opened:
            if not isinstance(connection, BaseException):
                await self._pool.release(connection)
        if failures:
            _log.warning(
                "opened %d of %d Redis connections at start-up; the rest open on first use: %s",
                wanted - len(failures),
                wanted,
                failures[0],
            )
        return wanted - len(failures)

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[ReadAnswer]:
        """Values for each request, in order, from one pipelined round trip."""
        if not requests:
            return []
        with translated_errors():
            if timer is None:
                replies = await self._round_trip(requests)
            else:
                with timer.stage(Stage.REDIS):
                    replies = await self._round_trip(requests)
        return decode_replies(requests, replies, timer)

    async def _round_trip(self, requests: Sequence[ReadRequest]) -> list[Any]:
        """Send every command in one write and read the replies, in order.

        An error reply (say, a key of the wrong type) is returned in its place.
        When the caller is cancelled mid-read (its deadline passed), the
        connection goes to a background task that reads the rest of the replies
        within this call's timeout and then returns it to the pool.  Any other
        failure, this call's own timeout included, drops the connection, so no
        later read sees a stale reply.
        """
        # hiredis' stub types the argument as a one-element tuple; it takes any length.
        commands = [command for request in requests for command in read_commands(request)]
        packed = b"".join([hiredis.pack_command(args) for args in commands])  # type: ignore[arg-type]
        replies: list[Any] = []
        bound = ReplyDeadline(asyncio.get_running_loop().time() + self._timeout_s)
        async with bound:
            connection = await self._acquire()
            try:
                await connection.send_packed_command(packed, check_health=False)
                for _ in commands:
                    replies.append(await read_reply(connection))
            except asyncio.CancelledError:
                if bound.expired() or not connection.is_connected:
                    await self._drop(connection)
                else:
                    self._drain_later(connection, len(commands) - len(replies), bound.when)
                raise
            except BaseException:
                await self._drop(connection)
                raise
            await self._release(connection)
        return fold_replies(requests, replies)

    async def _acquire(self) -> Any:
        self._held += 1
        if self._held > self._held_peak:
            self._held_peak = self._held
        try:
            return await self._pool.get_connection()
        except BaseException:
            self._held -= 1
            raise

    async def _release(self, connection: Any) -> None:
        self._held -= 1
        await self._pool.release(connection)

    async def _drop(self, connection: Any) -> None:
        """Close ``connection`` (its replies are out of step) and hand it back to the pool."""
        try:
            await connection.disconnect(nowait=True)
        finally:
            await self._release(connection)

    def _drain_later(self, connection: Any, replies: int, until: float) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(connection, replies, until))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, connection: Any, replies: int, until: float) -> None:
        """Read and discard the ``replies`` still due on ``connection``, then pool it."""
        try:
            async with ReplyDeadline(until):
                for _ in range(replies):
                    await read_reply(connection)
        except asyncio.CancelledError:
            await self._drop(connection)
            raise
        except Exception as exc:
            # Redis slower than the read's timeout, or gone: the resolver has already
            # logged that the read missed its deadline.
            _log.debug("dropping a Redis connection whose abandoned reply did not come: %r", exc)
            await self._drop(connection)
        else:
            await self._release(connection)

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """See ``RedisStore.write``; each chunk is bounded by the write timeout."""
        outcomes: list[WriteOutcome] = []
        calls = [_script_call(update) for update in updates]
        with translated_errors():
            for chunk in _chunks(calls):
                sent = _ChunkWrite(chunk)
                async with asyncio.timeout(self._timeout_s):
                    again = sent.by_source(await self._execute(chunk, by_sha=True))
                    resent = await self._execute(again, by_sha=False) if again else []
                outcomes += sent.outcomes(resent)
        return outcomes

    async def _execute(self, calls: Sequence[ScriptCall], by_sha: bool) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            _queue(pipe, calls, by_sha)
            return list(await pipe.execute(raise_on_error=False))

    async def ping(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            with translated_errors():
                async with asyncio.timeout(self._timeout_s):
                    return bool(await self._client.ping())
        except StoreError:
            return False

    DOWN = "down (serving from fallbacks: stale, backing, defaults)"
    """What the status page says when ``ping`` fails."""

    def node_breakers(self) -> dict[str, CircuitBreaker]:
        """The breakers of the store's own nodes, by node, for the status page: none for
        one server, whose breaker is its tier's."""
        return {}

    async def memory(self) -> list[MemoryReport]:
        """How full the server is (``INFO memory stats``); ``StoreError`` when it cannot say."""
        with translated_errors():
            async with asyncio.timeout(self._timeout_s):
                info = await self._client.info(*INFO_SECTIONS)
        return [memory_report("", info)]

    async def close(self) -> None:
        """Stop draining abandoned replies and close the client's connections."""
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await self._client.aclose()
