"""``/score`` latency on the same Redis while a materialization writes into it, against idle.

Usage::

    python -m bench.materialize_impact [--users 200000] [--rate 100] [--in-flight 4 32]
        [--tables DIR]

Starts one Redis, trains a small model, serves featserve (``bentoml serve``)
pinned to CPU 0, and sends paced ``/score`` requests (``--rate`` per second,
2 connections, users ``u000000``..``u001999``) from this process, which runs
on CPU 1 with Redis and the materialization (a ``featserve materialize``
child).  For each ``--in-flight`` setting (``FEATSERVE_MATERIALIZE_IN_FLIGHT``):
10 s idle, then the ``user:features`` table of ``--users`` users written while
the load goes on (the demo table of ``bench.materialize_bench``, kept in
``--tables DIR`` when given; the served users' features are loaded first, by
``featserve demo-data`` of 2,000 users); it prints p50/p90/p99/max of ``/score`` in both windows
(requests sent and answered within each) and the run's entities per second.
The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import pin_cpus
from bench.materialize_bench import demo_table
from bench.report import markdown_table
from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.fault_drill import Answer, Load, score_bodies
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT, start_service, stop, train_small_model
from service.harness.stats import percentile

__all__ = ["main"]

IDLE_S = 10.0
SERVED_USERS = 2000


def _latencies_ms(answers: list[Answer]) -> list[float]:
    return sorted(1000.0 * (a.answered_at - a.sent_at) for a in answers if a.status == 200)


def _cells(label: str, answers: list[Answer]) -> list[str]:
    latencies = _latencies_ms(answers)
    failed = sum(1 for a in answers if a.status != 200)
    if not latencies:
        return [label, "0", str(failed), "-", "-", "-", "-"]
    return [
        label,
        str(len(latencies)),
        str(failed),
        *(f"{percentile(latencies, p):.2f}" for p in (50.0, 90.0, 99.0)),
        f"{latencies[-1]:.2f}",
    ]


def _materialize(table: Path, redis_url: str, in_flight: int) -> float:
    """Run ``featserve materialize`` on CPU 1 (this process's CPU); entities per second."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "FEATSERVE_PROJECT": str(EXAMPLE_PROJECT),
        "FEATSERVE_MATERIALIZE_IN_FLIGHT": str(in_flight),
    }
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from service.cli.main import main; sys.exit(main())",
            "materialize",
            str(table),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4])
    parser.add_argument("--tables", type=Path)
    args = parser.parse_args(argv)
    cpus = pin_cpus()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="materialize-impact-") as work, LocalRedis() as server:
        home = Path(work) / "bentoml"
        train_small_model(home)
        settings = Settings(redis_url=server.url)
        load_demo_data(
            server.url, SERVED_USERS, Path(work) / "served", settings, project=EXAMPLE_PROJECT
        )
        table = demo_table(args.users, (args.tables or Path(work)) / f"u{args.users}")
        process, url, _ = start_service(
            home, server, Path(work), cpus=None if cpus.server is None else str(cpus.server)
        )
        try:
            bodies = score_bodies(f"u{i:06d}" for i in range(SERVED_USERS))
            for in_flight in args.in_flight:
                load = Load(url, bodies, rate=args.rate, connections=2).start()
                try:
                    time.sleep(2.0)  # warm-up, not measured
                    idle_from = time.monotonic()
                    time.sleep(IDLE_S)
                    busy_from = time.monotonic()
                    seconds = _materialize(table, server.url, in_flight)
                    busy_to = time.monotonic()
                finally:
                    load.stop()
                rows.append(
                    _cells(f"idle (in-flight {in_flight})", load.answers(idle_from, busy_from))
                )
                rows.append(
                    _cells(
                        f"materializing, {args.users / seconds:,.0f} entities/s "
                        f"(in-flight {in_flight})",
                        load.answers(busy_from, busy_to),
                    )
                )
        finally:
            stop(process)
    print(f"CPUs: {cpus.describe()}; materialization on the load generator's CPU")
    print(f"load average after: {os.getloadavg()}")
    print(
        markdown_table(
            ["/score window", "answers", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
