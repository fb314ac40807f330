"""Safe under attack, measured: a client's latency and throughput with and without attackers.

Usage: ``python -m bench.attack_bench [--quick]`` (starts Redis, trains a small model, serves)

One featserve worker at the shipped defaults (a write token set, no read token) on CPU 0;
the load generator, the attackers and Redis on CPU 1.  A closed-loop client scores
(``/score``, 8 keep-alive connections) through interleaved rounds of ``ROUND_S`` seconds
(``ROUNDS`` of each phase, one with ``--quick``), in three phases:

- quiet: the client alone;
- slow bodies: 64 connections sending ``POST /score`` bodies a byte every 0.25 s
  (before issue 25 sixteen of them took every in-flight slot: every other request got 503);
- slow headers and idle connections: 64 connections sending headers a byte every 0.25 s,
  and 500 connections that send nothing.

For each phase: requests per second, refusals, errors, p50/p90/p99/max of the answers, and
p99 as a multiple of the quiet p99 measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

from bench.http_bench import USERS, bodies
from bench.load_run import LoadRun, WindowStats, closed_loop
from bench.machine import pin_cpus
from bench.report import Section, markdown_table
from bench.resolver_bench import demo_redis
from service.harness.served import running_service, train_small_model
from service.harness.slow_clients import SlowSenders, slow_body_request, slow_header_request
from service.harness.waiting import wait_until

__all__ = ["PHASES", "measure", "section"]

ROUNDS = 3
ROUND_S = 3.0
CONNECTIONS = 8
ATTACKERS = 64
IDLE_CONNECTIONS = 500


@contextlib.contextmanager
def quiet(host: str, port: int) -> Iterator[None]:
    """No attack."""
    yield


@contextlib.contextmanager
def slow_bodies(host: str, port: int) -> Iterator[None]:
    """64 connections sending ``/score`` bodies a byte at a time."""
    with SlowSenders(host, port, ATTACKERS, slow_body_request("/score")) as attack:
        wait_until(lambda: attack.sending >= ATTACKERS, timeout_s=30)
        yield


@contextlib.contextmanager
def slow_headers_and_idle(host: str, port: int) -> Iterator[None]:
    """64 connections sending headers a byte at a time, and 500 that send nothing."""
    request = slow_header_request()
    with SlowSenders(host, port, ATTACKERS, request, head_start=0) as attack:
        idle = [socket.create_connection((host, port)) for _ in range(IDLE_CONNECTIONS)]
        try:
            wait_until(lambda: attack.sending >= ATTACKERS, timeout_s=30)
            yield
        finally:
            for connection in idle:
                connection.close()


PHASES: dict[str, Callable[[str, int], AbstractContextManager[None]]] = {
    "quiet": quiet,
    f"{ATTACKERS} slow bodies": slow_bodies,
    f"{ATTACKERS} slow headers + {IDLE_CONNECTIONS} idle connections": slow_headers_and_idle,
}


def measure(
    bentoml_home: Path, redis_url: str, server_cpu: int | None, quick: bool, log_dir: Path
) -> dict[str, WindowStats]:
    """Serve featserve and load it through every phase, in interleaved rounds."""
    payloads = bodies(0)
    parts: dict[str, list[LoadRun]] = {}
    cpus = None if server_cpu is None else str(server_cpu)
    env = {"REDIS_URL": redis_url, "FEATSERVE_WRITE_TOKEN": "w" * 24}
    with running_service(bentoml_home, None, log_dir, cpus=cpus, **env) as (_, url):
        address = urlsplit(url)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        for _ in range(1 if quick else ROUNDS):
            for name, attack in PHASES.items():
                with attack(host, port):
                    run = asyncio.run(
                        closed_loop(url + "/score", payloads, CONNECTIONS, ROUND_S, warmup_s=0.5)
                    )
                parts.setdefault(name, []).append(run)
    stats = {}
    for name, runs in parts.items():
        whole = LoadRun.joined(runs)
        stats[name] = whole.window(0.0, whole.duration_s)
    return stats


def section(stats: dict[str, WindowStats], split_text: str) -> Section:
    """The phases as one table."""
    quiet_p99 = stats["quiet"].p99_ms
    rows = [
        [
            name, f"{s.rps:,.0f}", str(s.refused), str(s.errors), f"{s.p50_ms:.1f}",
            f"{s.p90_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.max_ms:.1f}", f"{s.p99_ms / quiet_p99:.2f}",
        ]
        for name, s in stats.items()
    ]  # fmt: skip
    table = markdown_table(
        ["phase", "req/s", "refused", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "p99 / quiet"],
        rows,
    )  # fmt: skip
    return Section(
        "Safe under attack: a client's latency with slow and idle connections",
        f"One featserve worker at the shipped defaults, `/score` from {CONNECTIONS} closed-loop "
        f"keep-alive connections, in interleaved rounds of {ROUND_S:g} s per phase; the "
        "attackers run in a thread of the load generator. Slow senders write a byte every "
        f"0.25 s. Core split: {split_text}",
        [table],
    )


def main(argv: list[str] | None = None) -> int:
    """Start Redis and a model, run the phases, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args(argv)
    cpus = pin_cpus()
    with (
        tempfile.TemporaryDirectory(prefix="featserve-bench-") as tmp,
        demo_redis(USERS) as redis_server,
    ):
        train_small_model(Path(tmp) / "bentoml")
        stats = measure(Path(tmp) / "bentoml", redis_server.url, cpus.server, args.quick, Path(tmp))
    print(section(stats, cpus.describe() + ".").markdown(Path("docs")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
