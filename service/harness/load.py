"""A bounded HTTP/1.1 load driver over raw asyncio streams, for ``featserve sla`` and benchmarks.

Usage::

    plan = LoadPlan(duration_s=5.0, concurrency=8)             # closed loop
    plan = LoadPlan(duration_s=5.0, concurrency=8, rate=200.0)  # paced: 200 requests/s
    samples = asyncio.run(drive(Endpoint.parse("http://127.0.0.1:3000/score"), bodies, plan))

Each of ``concurrency`` keep-alive connections sends one POST, reads the
whole answer and sends the next.  With ``rate`` the sends follow a shared
schedule (request ``i`` is due at ``i / rate`` seconds) and latency is
counted from when a request was due, not when it was sent, so a server that
falls behind shows as latency instead of silently lowering the rate
(no coordinated omission, up to ``concurrency`` requests in flight).

The run is bounded three ways: no request starts after ``duration_s``, each
has ``timeout_s``, and at most ``max_requests`` are sent; a ``stop`` event
ends it sooner.  Every response's ``Server-Timing`` header is parsed into
stage durations, and its body into the sources of its features
(``answers.answer_mix``).  A caller that needs more of each answer (the fault
drills check the values and ages in every body) passes ``observe``, which
sees each recorded sample with its response as it comes in.  ``exchange`` is
the one HTTP client routine; the benchmarks build their windows, worker RSS
and real answers per second on these samples (``bench.load_run``).

Raw asyncio streams rather than ``httpx``: ``httpx.AsyncClient`` needs far
more CPU per request than one BentoML worker spends answering it, so it
cannot saturate the server it measures (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from service.harness.answers import AnswerMix, answer_mix

__all__ = [
    "Endpoint",
    "LoadPlan",
    "Observer",
    "Response",
    "Sample",
    "drive",
    "encode_request",
    "exchange",
    "parse_server_timing",
]

MAX_DURATION_S = 600.0
"""The longest run ``drive`` accepts."""

MAX_REQUESTS = 1_000_000
"""The most requests one run may send."""

MAX_WARMUP_S = 60.0
"""The longest unrecorded warm-up ``drive`` accepts."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``POST path`` on ``host:port``, over TLS when ``tls``, with
    ``Authorization: Bearer <token>`` when ``token`` is set."""

    host: str
    port: int
    path: str
    tls: bool = False
    token: str | None = None

    @classmethod
    def parse(cls, url: str, token: str | None = None) -> Endpoint:
        """``http://host:port/path`` or ``https://...``; ``ValueError`` for anything else."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        tls = parts.scheme == "https"
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        return cls(parts.hostname, parts.port or (443 if tls else 80), path, tls, token)


def encode_request(host: str, port: int, path: str, body: bytes, token: str | None = None) -> bytes:
    """One complete keep-alive ``POST`` with a JSON body (and a bearer token, if given)."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True, slots=True)
class Response:
    """What ``exchange`` read: the status, the headers (lower-case names) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        """Whether the server lets the connection be reused."""
        return self.headers.get("connection", "").lower() != "close"


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Response:
    """Send one request and read its whole answer (``Content-Length`` or chunked framing).

    Raises ``ValueError`` for framing it does not understand.
    """
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for name, _, value in (line.partition(":") for line in header_lines if line):
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            raise ValueError(f"unsupported response framing: {sorted(headers)}")
    except ConnectionError as exc:
        # The head was read: an answer cut short, not one never given.
        raise asyncio.IncompleteReadError(head, None) from exc
    return Response(status, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
        pass
    return b"".join(parts)


def parse_server_timing(value: str) -> dict[str, float]:
    """``"cache;dur=0.02, total;dur=0.71"`` -> ``{"cache": 0.02, "total": 0.71}`` (ms).

    Metrics without a ``dur`` parameter are left out.
    """
    stages: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if key.strip().lower() == "dur" and name:
                try:
                    stages[name] = float(number.strip().strip('"'))
                except ValueError:
                    continue
    return stages


@dataclass(frozen=True)
class LoadPlan:
    """How hard and how long to drive an endpoint."""

    duration_s: float
    concurrency: int = 1
    """Connections, each with at most one request in flight."""
    rate: float | None = None
    """Requests per second over all connections; ``None``: as fast as answers come."""
    timeout_s: float = 10.0
    """How long one request may take before it is recorded as failed (status 0)."""
    max_requests: int = MAX_REQUESTS
    """The most requests sent, warm-up included."""
    warmup_s: float = 0.0
    """Unrecorded load before the measured ``duration_s``."""
    honour_retry_after: bool = False
    """Whether a connection refused with ``Retry-After`` (503, 429) waits that long before
    its next request, as a well-behaved client does; otherwise it sends again at once."""
    in_order: bool = False
    """Send the bodies in their order, round and round (the ``n``-th request sends body
    ``n % len(bodies)``), so that an entity comes back only after every other body's;
    otherwise each request's body is picked at random."""

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] s")
        if not 1 <= self.concurrency <= 1024:
            raise ValueError("concurrency must be 1 to 1024")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise ValueError(f"max_requests must be 1 to {MAX_REQUESTS}")
        if not 0 <= self.warmup_s <= MAX_WARMUP_S:
            raise ValueError(f"warm-up must be 0 to {MAX_WARMUP_S:g} s")


@dataclass(frozen=True, slots=True)
class Sample:
    """One recorded request: when it was due (s from the start), its latency, its answer."""

    due_s: float
    latency_s: float
    status: int
    """0 when no HTTP answer came (connection error, timeout, unreadable framing)."""
    stages_ms: dict[str, float]
    """The response's ``Server-Timing`` durations."""
    retry_after: bool = False
    """Whether the response carried ``Retry-After`` (shed load, when the status is 503 or 429)."""
    mix: AnswerMix | None = None
    """Where the answers' features came from, when the body held featserve answers."""
    body_index: int = 0
    """Which of the request bodies was sent (an index into ``drive``'s ``bodies``)."""
    error: str = ""
    """Why no answer came (status 0): ``refused``, a new connection refused or closed before
    any byte of an answer (the server never took the request); ``reset``, a connection that
    had been served on, or an answer, cut short; ``timeout``; ``framing``."""


Observer = Callable[[Sample, Response | None], None]
"""Called with each recorded sample and its response (``None`` when none came), on the
driver's event loop as the answer comes in: keep it short."""


@dataclass
class _Schedule:
    """The shared send schedule of one run."""

    plan: LoadPlan
    start: float
    deadline: float
    stop: threading.Event | None = None
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def next_due(self) -> tuple[float, int] | None:
        """When the next request is due (perf_counter time) and its place in the run, or
        ``None`` when the run is over."""
        now = time.perf_counter()
        if now >= self.deadline or (self.stop is not None and self.stop.is_set()):
            return None
        index = next(self.counter)
        if index >= self.plan.max_requests:
            return None
        if self.plan.rate is None:
            return now, index
        due = self.start - self.plan.warmup_s + index / self.plan.rate
        return (due, index) if due < self.deadline else None


async def drive(
    endpoint: Endpoint,
    bodies: Sequence[bytes],
    plan: LoadPlan,
    seed: int = 0,
    *,
    stop: threading.Event | None = None,
    observe: Observer | None = None,
) -> list[Sample]:
    """Drive ``endpoint`` with ``plan``; each request's body is picked at random from
    ``bodies`` (in their order with ``plan.in_order``).

    No request starts once ``stop`` is set (from any thread); ``observe`` sees each
    recorded sample with its response.
    """
    if not bodies:
        raise ValueError("no request bodies")
    requests = [
        encode_request(endpoint.host, endpoint.port, endpoint.path, body, endpoint.token)
        for body in bodies
    ]
    start = time.perf_counter() + plan.warmup_s
    schedule = _Schedule(plan, start, start + plan.duration_s, stop)
    samples: list[Sample] = []
    tls = ssl.create_default_context() if endpoint.tls else None
    async with asyncio.timeout(plan.warmup_s + plan.duration_s + plan.timeout_s + 5.0):
        await asyncio.gather(
            *(
                _connection(
                    endpoint, tls, requests, random.Random(seed + i), schedule, samples, observe
                )
                for i in range(plan.concurrency)
            )
        )
    samples.sort(key=lambda sample: sample.due_s)
    return samples


async def _connection(
    endpoint: Endpoint,
    tls: ssl.SSLContext | None,
    requests: Sequence[bytes],
    rng: random.Random,
    schedule: _Schedule,
    samples: list[Sample],
    observe: Observer | None,
) -> None:
    """Send requests one after another on one connection, reconnecting after a failure."""
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while (next_due := schedule.next_due()) is not None:
            due, place = next_due
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            in_order = schedule.plan.in_order
            index = place % len(requests) if in_order else rng.randrange(len(requests))
            response: Response | None = None
            error = ""
            fresh = streams is None
            try:
                async with asyncio.timeout(schedule.plan.timeout_s):
                    if streams is None:
                        streams = await asyncio.open_connection(
                            endpoint.host, endpoint.port, ssl=tls
                        )
                    response = await exchange(*streams, requests[index])
            except TimeoutError:
                error = "timeout"
            except ValueError:
                error = "framing"
            except (OSError, asyncio.IncompleteReadError) as exc:
                error = "refused" if fresh and _nothing_answered(exc) else "reset"
            latency = time.perf_counter() - due
            if due >= schedule.start:
                sample = _sample(due - schedule.start, latency, response, index, error)
                samples.append(sample)
                if observe is not None:
                    observe(sample, response)
            if (response is None or not response.keep_alive) and streams is not None:
                streams[1].close()
                streams = None
            if schedule.plan.honour_retry_after and response is not None:
                await asyncio.sleep(_retry_after_s(response))
    finally:
        if streams is not None:
            streams[1].close()


def _retry_after_s(response: Response) -> float:
    """The wait a refusal asks for, in seconds (``Retry-After`` in seconds); 0 otherwise."""
    if response.status not in (429, 503):
        return 0.0
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def _nothing_answered(exc: BaseException) -> bool:
    """Whether ``exc`` ended an exchange before any byte of an answer was read."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return isinstance(exc, ConnectionError)


def _sample(
    due_s: float, latency_s: float, response: Response | None, index: int, error: str = ""
) -> Sample:
    if response is None:
        return Sample(due_s, latency_s, 0, {}, body_index=index, error=error)
    headers = response.headers
    return Sample(
        due_s,
        latency_s,
        response.status,
        parse_server_timing(headers.get("server-timing", "")),
        retry_after="retry-after" in headers,
        mix=answer_mix(response.body) if 200 <= response.status < 300 else None,
        body_index=index,
    )
