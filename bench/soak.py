"""Soak: /score and /push together for minutes at 64 connections; is everything flat?

Usage: ``python -m bench.soak [--minutes 10] [--connections 64] [--push-connections 8]
[--write]``

Serves the example project's ``ScoringService`` (shipped settings, one worker, a write
token) over an embedded Redis holding the demo features, then drives it for ``--minutes``
with the harness's load driver:
``--connections`` closed-loop connections in all, ``--push-connections`` of them sending
``POST /push`` (one update of a random demo user, event time now) and the rest ``POST
/score``. Every connection honours ``Retry-After``: a refused request (503) waits as long as
the answer asks before the next. Each minute it reports, per endpoint, requests and real
answers per second, refusals, errors, p50/p99 of the answers, and for the server the peak
RSS of its workers and the open file descriptors of the server and its workers. Flat means
the last minute within 1.1x of the second on p99 and RSS (the first minute warms caches and
pools). The server is pinned to one CPU, the load generator and Redis to the other, when
``taskset`` and two CPUs are there. Nothing is asserted: this measures. ``--write`` puts the
report into docs/reliability.md, between its ``soak`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.load_run import LoadRun, WindowStats
from bench.machine import CpuSplit, pin_cpus, worker_rss
from bench.report import MarkedSection, machine_lines
from bench.sustained import load_features, score_bodies
from service.harness.load import Endpoint, LoadPlan, drive
from service.harness.local_redis import LocalRedis
from service.harness.served import start_service, stop, train_small_model

__all__ = ["main"]

DEMO_USERS = 10_000
MINUTE_S = 60.0
DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
SECTION = MarkedSection("soak", "python -m bench.soak --write")
MB = 1024 * 1024


@dataclass(frozen=True)
class Minute:
    """One minute of the soak: each endpoint's window and the server's resources."""

    index: int
    score: WindowStats
    push: WindowStats
    rss_peak_mb: float | None
    open_fds: int | None


def push_bodies(n_users: int, count: int = 2000, seed: int = 11) -> list[bytes]:
    """``/push`` bodies of one update each, for random demo users, dated at build time (a
    few seconds in the past while the soak runs: every push lands as the newest value)."""
    rng = random.Random(seed)
    now = time.time()
    return [
        json.dumps(
            {
                "updates": [
                    {
                        "entity_id": f"u{rng.randrange(n_users):06d}",
                        "event_timestamp": now,
                        "values": {"tx_count_1h": rng.randrange(50)},
                    }
                ]
            }
        ).encode()
        for _ in range(count)
    ]


def open_fds(server_pid: int) -> int:
    """File descriptors open in ``bentoml serve`` and every process below it."""
    server = psutil.Process(server_pid)
    total = 0
    for process in (server, *server.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.num_fds()
    return total


async def soak(
    base_url: str,
    token: str,
    server_pid: int,
    minutes: int,
    connections: int,
    push_connections: int,
) -> list[Minute]:
    """Drive both endpoints for ``minutes``; sample RSS and descriptors every second."""
    duration_s = minutes * MINUTE_S
    scores = score_bodies(DEMO_USERS)
    pushes = push_bodies(DEMO_USERS)

    def plan(concurrency: int) -> LoadPlan:
        return LoadPlan(
            duration_s=duration_s,
            concurrency=concurrency,
            warmup_s=2.0,
            honour_retry_after=True,
        )

    start = time.perf_counter() + 2.0
    resources: list[tuple[float, int, int]] = []

    async def sample_resources() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        while (now := time.perf_counter()) <= start + duration_s:
            resources.append((now - start, worker_rss(server_pid), open_fds(server_pid)))
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - now)))

    score_samples, push_samples, _ = await asyncio.gather(
        drive(Endpoint.parse(f"{base_url}/score"), scores, plan(connections - push_connections)),
        drive(Endpoint.parse(f"{base_url}/push", token=token), pushes, plan(push_connections), 1),
        sample_resources(),
    )
    score_run = LoadRun(duration_s, score_samples)
    push_run = LoadRun(duration_s, push_samples)
    result = []
    for index in range(minutes):
        begin, end = index * MINUTE_S, (index + 1) * MINUTE_S
        inside = [(rss, fds) for at, rss, fds in resources if begin <= at <= end]
        result.append(
            Minute(
                index + 1,
                score_run.window(begin, end),
                push_run.window(begin, end),
                max((rss for rss, _ in inside), default=0) / MB or None,
                max((fds for _, fds in inside), default=None),
            )
        )
    return result


def report(minutes: Sequence[Minute], cpus: CpuSplit, connections: int, pushes: int) -> str:
    """The per-minute table and the flatness ratios, as Markdown."""
    lines = [
        "## Soak: /score and /push together",
        "",
        *machine_lines(),
        "",
        f"{connections} connections ({connections - pushes} `/score`, {pushes} `/push`), "
        "each honouring `Retry-After`; " + cpus.describe() + ".",
        "",
        "| minute | /score real/s | /score refused | /score p50 ms | /score p99 ms "
        "| /push written/s | /push refused | /push p99 ms | errors | worker RSS MB | open fds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for minute in minutes:
        score, push = minute.score, minute.push
        lines.append(
            f"| {minute.index} | {score.real_rps:,.0f} | {score.refused:,} "
            f"| {score.p50_ms:.2f} | {score.p99_ms:.2f} | {push.real_rps:,.0f} "
            f"| {push.refused:,} | {push.p99_ms:.2f} | {score.errors + push.errors} "
            f"| {_number(minute.rss_peak_mb)} | {_number(minute.open_fds)} |"
        )
    if len(minutes) >= 3:
        second, last = minutes[1], minutes[-1]
        p99_ratio = last.score.p99_ms / second.score.p99_ms
        rss_ratio = (last.rss_peak_mb or 0) / (second.rss_peak_mb or 1)
        flat = p99_ratio <= 1.1 and rss_ratio <= 1.1
        lines += [
            "",
            f"Last minute against the second: /score p99 {p99_ratio:.2f}x, worker RSS "
            f"{rss_ratio:.2f}x: {'flat' if flat else 'NOT flat'} (flat: both within 1.1x).",
        ]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--push-connections", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="into docs/reliability.md")
    args = parser.parse_args(argv)
    if not 0 < args.push_connections < args.connections:
        parser.error("--push-connections must be between 0 and --connections")
    cpus = pin_cpus()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="featserve-soak-") as scratch:
        folder = Path(scratch)
        home = folder / "bentoml"
        train_small_model(home)
        with LocalRedis() as redis_server:
            load_features(redis_server.url, folder / "tables")
            process, url, _ = start_service(
                home,
                redis_server,
                folder,
                cpus=None if cpus.server is None else str(cpus.server),
                FEATSERVE_WRITE_TOKEN=token,
            )
            try:
                minutes = asyncio.run(
                    soak(
                        url, token, process.pid, args.minutes, args.connections,
                        args.push_connections,
                    )
                )  # fmt: skip
            finally:
                stop(process)
    text = report(minutes, cpus, args.connections, args.push_connections)
    print(text)
    if args.write:
        SECTION.write(DOC, text)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
