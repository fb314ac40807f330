"""One benchmark load run on the harness's load driver: its samples, the workers' RSS, windows.

Usage::

    run = asyncio.run(closed_loop("http://127.0.0.1:3000/score", bodies, 16, 60.0, rss_of=pid))
    first, last = run.windows(10.0)[0], run.windows(10.0)[-1]
    whole = LoadRun.joined([run_a, run_b]).window(0.0, 120.0)

``closed_loop`` drives the endpoint with ``service.harness.load.drive``
(``connections`` keep-alive connections, each sending again as soon as its
answer is read, after an unrecorded warm-up) while it samples the RSS of the
server's workers every second.  A ``WindowStats`` sums up the requests sent
within a time window: requests and real answers per second, refusals, errors
and the latency percentiles of the answers.  An answer is real when it is a
200 whose features, if it holds featserve answers, all came from Redis or
the cache (``is_real``); a 503 or 429 is a refusal, not an error: the server
said at once that it is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.machine import worker_rss
from features.sources import REAL_SOURCES
from service.harness.load import Endpoint, LoadPlan, Sample, drive
from service.harness.stats import percentiles

__all__ = ["REFUSALS", "LoadRun", "WindowStats", "closed_loop", "is_real"]

REFUSALS = frozenset({429, 503})
"""Statuses that say "full, retry later" (with ``Retry-After``) rather than fail."""

RSS_INTERVAL_S = 1.0
"""How often the workers' RSS is sampled."""


def is_real(sample: Sample) -> bool:
    """Whether ``sample`` is an answer (200) whose every feature group, if it holds featserve
    answers, came from Redis or the cache (any other body's 200 is real)."""
    if sample.status != 200:
        return False
    mix = sample.mix
    return mix is None or all(source in REAL_SOURCES for source, _ in mix.sources)


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
    """Real answers (``is_real``) per second."""
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

    @property
    def real_share(self) -> float:
        """Real answers as a share of the answers (200)."""
        answered = self.requests - self.errors - self.refused
        return self.real_rps * (self.end_s - self.start_s) / answered if answered else 0.0


@dataclass(frozen=True)
class LoadRun:
    """What one run recorded; times are seconds from the end of the warm-up."""

    duration_s: float
    samples: Sequence[Sample]
    """``drive``'s samples, in the order they were due (for a closed loop: sent)."""
    rss: Sequence[tuple[float, int]] = ()
    """(time, RSS in bytes summed over the worker processes), one a second."""

    def window(self, start_s: float, end_s: float) -> WindowStats:
        """Statistics of the requests sent within ``[start_s, end_s)``; latency percentiles
        are those of the answers (200), since refusals are immediate by design."""
        picked = [s for s in self.samples if start_s <= s.due_s < end_s]
        latencies = [s.latency_s * 1000.0 for s in picked if s.status == 200]
        p50, p90, p99, p999 = percentiles(latencies, (50.0, 90.0, 99.0, 99.9))
        rss = [value for at, value in self.rss if start_s <= at <= end_s]
        refused = sum(1 for s in picked if s.status in REFUSALS)
        answered = sum(1 for s in picked if s.status == 200)
        length = end_s - start_s
        return WindowStats(
            start_s=start_s,
            end_s=end_s,
            requests=len(picked),
            errors=len(picked) - answered - refused,
            refused=refused,
            real_rps=sum(map(is_real, picked)) / length,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            p999_ms=p999,
            max_ms=max(latencies, default=math.nan),
            rps=len(picked) / length,
            rss_peak_bytes=max(rss, default=None),
        )

    def windows(self, length_s: float) -> list[WindowStats]:
        """Consecutive windows of ``length_s`` covering the run."""
        count = max(1, round(self.duration_s / length_s))
        return [self.window(i * length_s, (i + 1) * length_s) for i in range(count)]

    @classmethod
    def joined(cls, parts: Sequence[LoadRun]) -> LoadRun:
        """Several runs as one, back to back: each part's times shift by the durations before it."""
        samples: list[Sample] = []
        rss: list[tuple[float, int]] = []
        offset = 0.0
        for part in parts:
            samples.extend(dataclasses.replace(s, due_s=s.due_s + offset) for s in part.samples)
            rss.extend((at + offset, value) for at, value in part.rss)
            offset += part.duration_s
        return cls(offset, samples, rss)


async def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    connections: int,
    duration_s: float,
    warmup_s: float = 2.0,
    rss_of: int | None = None,
    in_order: bool = False,
) -> LoadRun:
    """Drive ``POST url`` from ``connections`` closed-loop connections, each body picked at
    random from ``bodies`` (in their order with ``in_order``); sample the RSS of the workers
    of server ``rss_of``."""
    plan = LoadPlan(
        duration_s=duration_s, concurrency=connections, warmup_s=warmup_s, in_order=in_order
    )
    start = time.perf_counter() + warmup_s
    rss: list[tuple[float, int]] = []
    load = drive(Endpoint.parse(url), bodies, plan)
    if rss_of is None:
        return LoadRun(duration_s, await load)
    samples, _ = await asyncio.gather(load, _sample_rss(rss_of, start, start + duration_s, rss))
    return LoadRun(duration_s, samples, rss)


async def _sample_rss(
    server_pid: int, start: float, deadline: float, into: list[tuple[float, int]]
) -> None:
    """Append the workers' RSS to ``into`` every second from ``start`` to ``deadline``."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    while (now := time.perf_counter()) <= deadline + 0.5:
        into.append((now - start, worker_rss(server_pid)))
        await asyncio.sleep(max(0.0, RSS_INTERVAL_S - (time.perf_counter() - now)))
