"""Slow clients, as an attacker runs them: connections that send a request a byte at a time.

Usage::

    with SlowSenders(host, port, connections=64, request=slow_body_request("/score")) as attack:
        wait_until(lambda: attack.sending >= 64)
        ...  # measure other clients meanwhile
    attack.statuses  # what the server answered the slow requests, e.g. {408: 120}

Each connection sends ``request`` one byte every ``byte_interval_s`` and reads
whatever the server answers; when the server answers or closes, it records the
status and connects again, until the block ends.  All of them run on one
asyncio loop in a thread of their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from types import TracebackType

__all__ = ["SlowSenders", "slow_body_request", "slow_header_request"]


def slow_body_request(path: str, body_length: int = 235, extra_headers: str = "") -> bytes:
    """A ``POST`` whose headers are whole and whose JSON body is ``body_length`` bytes long;
    ``extra_headers``: more header lines, each ending in CRLF."""
    body = (b'{"entity_id": "u000001", "amount": 1.0, "pad": "' + b"x" * body_length)[:body_length]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: featserve\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n{extra_headers}\r\n"
    ).encode()
    return head + body


def slow_header_request(path: str = "/readyz", header_count: int = 1000) -> bytes:
    """A ``GET`` with many headers, never finished: sent slowly, the headers never end."""
    lines = "".join(f"X-Slow-{i}: {i}\r\n" for i in range(header_count))
    return f"GET {path} HTTP/1.1\r\nHost: featserve\r\n{lines}".encode()


class SlowSenders:
    """``connections`` connections each sending ``request`` slowly; see the module docstring.

    ``head_start``: how many bytes of the request go at once before the trickle starts
    (by default the headers of a ``POST``, so only the body is slow).
    """

    def __init__(
        self,
        host: str,
        port: int,
        connections: int,
        request: bytes,
        byte_interval_s: float = 0.25,
        head_start: int | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._connections = connections
        self._request = request
        self._interval_s = byte_interval_s
        self._head_start = request.index(b"\r\n\r\n") + 4 if head_start is None else head_start
        self.statuses: collections.Counter[int] = collections.Counter()
        """Statuses the server answered slow requests with (0: closed without an answer)."""
        self.sending = 0
        """Connections open and sending now."""
        self.longest_open_s = 0.0
        """The longest a connection stayed open before the server answered or closed it."""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowSenders:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._attack())
        self._loop.close()

    async def _attack(self) -> None:
        self._stop = asyncio.Event()
        await asyncio.gather(*(self._one_connection() for _ in range(self._connections)))

    async def _one_connection(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self._host, self._port)
            except OSError:
                await asyncio.sleep(self._interval_s)
                continue
            self.sending += 1
            opened = self._loop.time()
            try:
                status = await self._send_slowly(reader, writer)
            finally:
                self.sending -= 1
                self.longest_open_s = max(self.longest_open_s, self._loop.time() - opened)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if status is not None:
                self.statuses[status] += 1

    async def _send_slowly(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> int | None:
        """Trickle the request; the status the server answered (0: it closed), or ``None``
        when the block ended first."""
        assert self._stop is not None
        answer = asyncio.ensure_future(reader.read(65536))
        try:
            writer.write(self._request[: self._head_start])
            for position in range(self._head_start, len(self._request)):
                done, _ = await asyncio.wait([answer], timeout=self._interval_s)
                if answer in done:
                    return _status(answer.result())
                if self._stop.is_set():
                    return None
                try:
                    writer.write(self._request[position : position + 1])
                except (ConnectionError, RuntimeError):
                    return 0
            return _status(await answer)
        except ConnectionError:
            return 0
        finally:
            answer.cancel()


def _status(data: bytes) -> int:
    """The status code of an HTTP response's first bytes; 0 for none (the server closed)."""
    parts = data.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return 0
    return int(parts[1])
