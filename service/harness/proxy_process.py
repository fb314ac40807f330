"""The TCP proxy in a process of its own, so that nothing in the test's process can delay it.

``TcpProxy`` runs on a thread: it shares the GIL with the test that drives it,
and a test busy parsing answers or running a load generator holds up the
proxy's forwarding, so a 5 ms round trip becomes 8.  ``ProxyProcess`` runs the
same proxy in a child process (optionally under real-time scheduling, see
``realtime``), with the same controls and counters, each a call over a pipe::

    with ProxyProcess("127.0.0.1", redis_port, realtime=True) as proxy:
        proxy.set_latency(0.005)
        client = redis.Redis.from_url(proxy.redis_url)
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

from service.harness.realtime import become_realtime
from service.harness.tcp_proxy import HOST, TcpProxy

__all__ = ["ProxyProcess"]

CONTROL_TIMEOUT_S = 15.0
"""How long a call waits for the proxy process to answer (its start included)."""

_CALLS = frozenset(
    {
        "connections",
        "round_trips",
        "bytes_up",
        "bytes_down",
        "reset_counters",
        "set_latency",
        "blackhole",
        "reset_connections",
        "refuse",
    }
)
"""What the parent may ask of the proxy: ``TcpProxy``'s counters and faults."""


class ProxyProcess:
    """A ``TcpProxy`` to ``upstream_host:upstream_port`` in a child process; see the module."""

    def __init__(self, upstream_host: str, upstream_port: int, realtime: bool = False) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.realtime = realtime
        self._lock = threading.Lock()
        self._pipe: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._port: int | None = None
        self.running_realtime = False
        """Whether the proxy got real-time scheduling (asked for, and allowed)."""

    def start(self) -> Self:
        """Start the process; returns once the proxy accepts connections."""
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(theirs, self.upstream_host, self.upstream_port, self.realtime),
            name="tcp-proxy",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._pipe = ours
        self._port, self.running_realtime = self._answer()
        return self

    def close(self) -> None:
        """Stop the proxy (every connection reset) and its process. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.is_alive():
                self._call("close")
        finally:
            process.join(timeout=CONTROL_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            if self._pipe is not None:
                self._pipe.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The local port clients connect to."""
        if self._port is None:
            raise RuntimeError("ProxyProcess is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` clients connect to."""
        return HOST, self.port

    @property
    def redis_url(self) -> str:
        """A ``redis://`` URL for database 0 through the proxy."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def connections(self) -> int:
        """Client connections accepted since the last reset."""
        return int(self._call("connections"))

    @property
    def round_trips(self) -> int:
        """Client turns since the last reset (see ``TcpProxy``)."""
        return int(self._call("round_trips"))

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the server since the last reset."""
        return int(self._call("bytes_up"))

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the server to clients since the last reset."""
        return int(self._call("bytes_down"))

    def reset_counters(self) -> None:
        """Zero every counter."""
        self._call("reset_counters")

    def set_latency(self, rtt: float) -> None:
        """See ``TcpProxy.set_latency``."""
        self._call("set_latency", rtt)

    def blackhole(self, enabled: bool = True) -> None:
        """See ``TcpProxy.blackhole``."""
        self._call("blackhole", enabled)

    def reset_connections(self) -> None:
        """See ``TcpProxy.reset_connections``."""
        self._call("reset_connections")

    def refuse(self, enabled: bool = True) -> None:
        """See ``TcpProxy.refuse``."""
        self._call("refuse", enabled)

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            if self._pipe is None:
                raise RuntimeError("ProxyProcess is not started")
            self._pipe.send((name, args))
            return self._answer()

    def _answer(self) -> Any:
        assert self._pipe is not None
        if not self._pipe.poll(CONTROL_TIMEOUT_S):
            raise RuntimeError(f"the proxy process did not answer within {CONTROL_TIMEOUT_S} s")
        ok, value = self._pipe.recv()
        if not ok:
            raise value
        return value


def _serve(pipe: Connection, upstream_host: str, upstream_port: int, realtime: bool) -> None:
    """The child: run the proxy and answer the parent's calls until it closes or goes away."""
    # Before the proxy's thread starts, which inherits the scheduling policy.
    running_realtime = become_realtime() if realtime else False
    with TcpProxy(upstream_host, upstream_port) as proxy:
        pipe.send((True, (proxy.port, running_realtime)))
        while True:
            try:
                name, args = pipe.recv()
            except EOFError:  # the parent is gone
                return
            if name == "close":
                pipe.send((True, None))
                return
            if name not in _CALLS:
                pipe.send((False, AttributeError(f"ProxyProcess has no call {name!r}")))
                continue
            try:
                member = getattr(proxy, name)
                value = member(*args) if callable(member) else member
            except Exception as exc:
                pipe.send((False, exc))
            else:
                pipe.send((True, value))
