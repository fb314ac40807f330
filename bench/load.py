"""A closed-loop HTTP/1.1 load generator and a worker-RSS sampler, for benchmarks.

Usage::

    bodies = [b'{"payload": {"n": 1}}']
    target = Target("127.0.0.1", 3000, "/echo", bodies)
    before = CpuSnapshot.take(server_pid)
    result = asyncio.run(run_load(target, connections=16, duration_s=60.0, rss_of=server_pid))
    shares = CpuSnapshot.take(server_pid).shares_since(before)  # who used the CPUs, in %
    first, last = result.windows(10.0)[0], result.windows(10.0)[-1]

Each of ``connections`` keep-alive connections sends one POST, reads the
whole answer, and sends the next, for ``duration_s`` seconds after a short
unrecorded warm-up.  Every request is recorded as (send time, latency,
status, real); status 0 means the request failed without an HTTP answer, and
"real" that a 200 answer passed the target's ``is_real`` check (for featserve:
every feature group from Redis or the cache).  A 503 or 429 is a refusal, not
an error: the server said at once that it is full.  The run stops by itself:
no request starts after the deadline, each has its own timeout, and the
record count is capped.

The client speaks HTTP/1.1 over raw asyncio streams: on this machine
``httpx.AsyncClient`` used a whole core to drive about 500 requests/s and so
could not saturate even one BentoML worker (about 1,350 requests/s), while
the raw client drove the worker to saturation with about 15 % of a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from service.harness.load import encode_request, exchange
from service.harness.stats import percentile

__all__ = ["CpuSnapshot", "LoadResult", "Target", "WindowStats", "run_load", "worker_rss"]

REQUEST_TIMEOUT_S = 10.0
"""How long one request may take before it is recorded as failed (status 0)."""

MAX_RECORDS = 2_000_000
"""The most requests one run records; the run stops early when it reaches this."""

REFUSALS = frozenset({429, 503})
"""Statuses that say "full, retry later" (with ``Retry-After``) rather than fail."""

RSS_INTERVAL_S = 1.0
"""How often the worker RSS is sampled."""


@dataclass(frozen=True)
class Target:
    """Where to send the load: ``POST path`` with a JSON body picked at random from ``bodies``."""

    host: str
    port: int
    path: str
    bodies: Sequence[bytes]
    is_real: Callable[[bytes], bool] | None = None
    """Whether a 200 answer's body is a real answer; ``None``: every 200 answer is."""

    def requests(self) -> list[bytes]:
        """Each body as a complete HTTP/1.1 keep-alive request."""
        return [encode_request(self.host, self.port, self.path, body) for body in self.bodies]


@dataclass(frozen=True)
class WindowStats:
    """Latency and throughput of the requests sent within ``[start_s, end_s)`` of the run."""

    start_s: float
    end_s: float
    requests: int
    errors: int
    """Requests with neither an answer (200) nor a refusal (503, 429)."""
    refused: int
    real_rps: float
    """Real answers (see ``Target.is_real``) per second."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    rps: float
    """Requests per second, refusals included."""
    rss_peak_bytes: int | None
    """The highest worker RSS sampled in the window (None when nothing was sampled)."""

    @property
    def refused_share(self) -> float:
        """Refusals as a share of the requests (0 to 1)."""
        return self.refused / self.requests if self.requests else 0.0


@dataclass
class LoadResult:
    """Everything one run recorded; times are seconds from the end of the warm-up."""

    duration_s: float
    send_s: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("H"))
    real: array[int] = field(default_factory=lambda: array("B"))
    rss: list[tuple[float, int]] = field(default_factory=list)
    """(time, RSS in bytes summed over the worker processes), one per second."""

    def record(self, sent_s: float, latency_s: float, status: int, real: bool) -> None:
        """Keep one request's outcome, unless it was sent during the warm-up."""
        if sent_s >= 0.0:
            self.send_s.append(sent_s)
            self.latency_s.append(latency_s)
            self.status.append(status)
            self.real.append(real)

    @property
    def full(self) -> bool:
        """Whether the record cap is reached."""
        return len(self.send_s) >= MAX_RECORDS

    def window(self, start_s: float, end_s: float) -> WindowStats:
        """Statistics of the requests sent within ``[start_s, end_s)``; latency percentiles
        are those of the answers (200), since refusals are immediate by design."""
        picked = [i for i, sent in enumerate(self.send_s) if start_s <= sent < end_s]
        latencies = sorted(self.latency_s[i] * 1000.0 for i in picked if self.status[i] == 200)
        rss = [value for t, value in self.rss if start_s <= t <= end_s]
        refused = sum(1 for i in picked if self.status[i] in REFUSALS)
        return WindowStats(
            start_s=start_s,
            end_s=end_s,
            requests=len(picked),
            errors=sum(1 for i in picked if self.status[i] != 200) - refused,
            refused=refused,
            real_rps=sum(self.real[i] for i in picked) / (end_s - start_s),
            p50_ms=percentile(latencies, 50.0),
            p90_ms=percentile(latencies, 90.0),
            p99_ms=percentile(latencies, 99.0),
            p999_ms=percentile(latencies, 99.9),
            max_ms=latencies[-1] if latencies else math.nan,
            rps=len(picked) / (end_s - start_s),
            rss_peak_bytes=max(rss) if rss else None,
        )

    @classmethod
    def joined(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """Several runs as one, back to back: each part's times shift by the durations before it."""
        whole = cls(sum(part.duration_s for part in parts))
        offset = 0.0
        for part in parts:
            whole.send_s.extend(sent + offset for sent in part.send_s)
            whole.latency_s.extend(part.latency_s)
            whole.status.extend(part.status)
            whole.real.extend(part.real)
            whole.rss.extend((at + offset, value) for at, value in part.rss)
            offset += part.duration_s
        return whole

    def windows(self, length_s: float) -> list[WindowStats]:
        """Consecutive windows of ``length_s`` covering the run."""
        count = max(1, round(self.duration_s / length_s))
        return [self.window(i * length_s, (i + 1) * length_s) for i in range(count)]


def worker_rss(server_pid: int) -> int:
    """RSS in bytes summed over the descendants of ``server_pid`` (``bentoml serve``'s workers)."""
    total = 0
    for child in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


def _tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by ``process`` and its live descendants."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: by the server, by this process's tree, by the machine."""

    at_s: float
    server_s: float
    ours_s: float
    """This process and every descendant, the server included."""
    machine_s: float
    """Every CPU's busy time (user, nice, system, irq, softirq) since boot."""
    steal_s: float
    """Time the hypervisor gave our virtual CPUs to someone else."""

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        """Read the counters now."""
        machine = psutil.cpu_times()
        return cls(
            at_s=time.perf_counter(),
            server_s=_tree_cpu_s(psutil.Process(server_pid)),
            ours_s=_tree_cpu_s(psutil.Process()),
            machine_s=machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
            steal_s=getattr(machine, "steal", 0.0),
        )

    def shares_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Percent of one CPU used since ``before`` by the server, the rest of ours, others."""
        wall = self.at_s - before.at_s
        server = self.server_s - before.server_s
        ours = self.ours_s - before.ours_s
        machine = self.machine_s - before.machine_s
        return {
            "server": 100.0 * server / wall,
            "load generator + Redis": 100.0 * (ours - server) / wall,
            "other processes": 100.0 * max(0.0, machine - ours) / wall,
            "steal": 100.0 * (self.steal_s - before.steal_s) / wall,
        }


async def run_load(
    target: Target,
    connections: int,
    duration_s: float,
    warmup_s: float = 2.0,
    rss_of: int | None = None,
) -> LoadResult:
    """Drive ``target`` with closed-loop connections; sample the workers of ``rss_of``."""
    requests = target.requests()
    result = LoadResult(duration_s)
    start = time.perf_counter() + warmup_s
    deadline = start + duration_s
    tasks = [
        _connection_loop(target, requests, random.Random(seed), start, deadline, result)
        for seed in range(connections)
    ]
    if rss_of is not None:
        tasks.append(_sample_rss(rss_of, start, deadline, result))
    async with asyncio.timeout(warmup_s + duration_s + REQUEST_TIMEOUT_S + 5.0):
        await asyncio.gather(*tasks)
    return result


async def _connection_loop(
    target: Target,
    requests: Sequence[bytes],
    rng: random.Random,
    start: float,
    deadline: float,
    result: LoadResult,
) -> None:
    """Send requests one after another on one connection, reconnecting after a failure."""
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.perf_counter() < deadline and not result.full:
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    if streams is None:
                        streams = await asyncio.open_connection(target.host, target.port)
                    response = await exchange(*streams, rng.choice(requests))
                status, keep_alive = response.status, response.keep_alive
                real = status == 200 and (target.is_real is None or target.is_real(response.body))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                status, keep_alive, real = 0, False, False
            result.record(sent - start, time.perf_counter() - sent, status, real)
            if not keep_alive and streams is not None:
                streams[1].close()
                streams = None
    finally:
        if streams is not None:
            streams[1].close()


async def _sample_rss(server_pid: int, start: float, deadline: float, result: LoadResult) -> None:
    """Append the workers' RSS to ``result.rss`` every second from ``start`` to ``deadline``."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    while (now := time.perf_counter()) <= deadline + 0.5:
        result.rss.append((now - start, worker_rss(server_pid)))
        await asyncio.sleep(max(0.0, RSS_INTERVAL_S - (time.perf_counter() - now)))
