"""Sustained load: does p99 and worker RSS stay flat, with and without our timeout fix?

Usage: ``python -m bench.sustained [--duration 60] [--connections 16] [--quick] [--markdown]``

Runs three scenarios one after another, each against a freshly started
``bentoml serve`` on a free 127.0.0.1 port, for ``--duration`` seconds at
``--connections`` closed-loop connections (after a 2 s unrecorded warm-up):

- A: the echo service, BentoML as shipped (its request-timeout middleware
  leaves one live 60 s timer per request);
- B: the echo service with ``service.middleware.request_timeout`` installed and
  ``gc.freeze()`` at start-up, as the product does;
- C: the real ``ScoringService`` over an embedded Redis holding the demo
  features (``make serve``'s, materialized from tables written to a temporary
  folder), with a small model trained into a temporary ``BENTOML_HOME``.

For each it prints latency percentiles, throughput and worker RSS for the
first and the last window (10 s, or 5 s with ``--quick``, which also
shortens the runs to 15 s), the last/first ratios, and who used the CPUs
during each run: a busy "other processes" column means the run was
contended and its numbers are not the service's.  The server is pinned to
one CPU and the load generator and Redis to the other when ``taskset`` and
two CPUs are available.  Every process started is stopped on exit,
Ctrl-C or error.  Nothing is asserted: this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import random
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import bentoml
from rich import box
from rich.console import Console
from rich.table import Table

from bench.load_run import LoadRun, WindowStats, closed_loop
from bench.machine import CpuSnapshot, CpuSplit, pin_cpus, worker_rss
from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT, start_service, stop, train_small_model

__all__ = ["main"]

DEMO_USERS = 10_000
ECHO_BODY = b'{"payload": {"entity_id": "u000123", "amount": 250.0}}'
MB = 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    """One server configuration to load."""

    name: str
    service: str
    path: str
    env: Mapping[str, str]
    """The service's settings (``start_service`` drops the caller's own)."""
    bodies: Sequence[bytes]


@dataclass(frozen=True)
class Outcome:
    """What one scenario measured."""

    scenario: Scenario
    idle_rss_bytes: int
    cpu_shares: dict[str, float]
    """Percent of one CPU used during the run (warm-up included), by whom."""
    result: LoadRun


def load_features(redis_url: str, table_dir: Path) -> None:
    """Materialize the demo features into Redis, keeping its progress display out of the report."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stderr(output):
            load_demo_data(redis_url, DEMO_USERS, table_dir, project=EXAMPLE_PROJECT)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{output.getvalue()}") from None


def score_bodies(n_users: int, seed: int = 7) -> list[bytes]:
    """One ``/score`` body per demo user, with a random amount."""
    rng = random.Random(seed)
    return [
        f'{{"entity_id": "u{i:06d}", "amount": {rng.uniform(1.0, 2000.0):.2f}}}'.encode()
        for i in range(n_users)
    ]


def scenarios(redis_url: str) -> list[Scenario]:
    """The three configurations, in the order they run."""
    echo = "bench.echo_service:Echo"
    return [
        Scenario(
            "A echo, BentoML as shipped",
            echo,
            "/echo",
            {"BENCH_PATCH_TIMEOUT": "0", "BENCH_GC_FREEZE": "0"},
            [ECHO_BODY],
        ),
        Scenario(
            "B echo, timeout fix + gc.freeze",
            echo,
            "/echo",
            {"BENCH_PATCH_TIMEOUT": "1", "BENCH_GC_FREEZE": "1"},
            [ECHO_BODY],
        ),
        Scenario(
            "C ScoringService /score over Redis",
            "service.service:ScoringService",
            "/score",
            {"REDIS_URL": redis_url},
            score_bodies(DEMO_USERS),
        ),
    ]


def run_scenario(
    scenario: Scenario,
    bentoml_home: Path,
    cpus: CpuSplit,
    connections: int,
    duration_s: float,
    log_dir: Path,
) -> Outcome:
    """Serve ``scenario`` afresh, load it, stop it."""
    server_cpu = None if cpus.server is None else str(cpus.server)
    process, url, _ = start_service(
        bentoml_home, None, log_dir, scenario.service, cpus=server_cpu, **scenario.env
    )
    try:
        idle_rss = worker_rss(process.pid)
        before = CpuSnapshot.take(process.pid)
        result = asyncio.run(
            closed_loop(
                url + scenario.path, scenario.bodies, connections, duration_s, rss_of=process.pid
            )
        )
        cpu_shares = CpuSnapshot.take(process.pid).shares_since(before)
    finally:
        stop(process)
    return Outcome(scenario, idle_rss, cpu_shares, result)


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.0f}"


def _ratio(last: float | None, first: float | None) -> str:
    return "-" if not last or not first else f"{last / first:.2f}x"


def results_table(outcomes: Sequence[Outcome], window_s: float, style: box.Box) -> Table:
    """First and last window of each scenario, with the last/first ratios."""
    table = Table(box=style, title=f"First and last {window_s:g} s of each run")
    for column in (
        "scenario", "window", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        "worker RSS MB", "errors", "p99 last/first", "RSS last/first",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("scenario", "window") else "right")
    for outcome in outcomes:
        windows = outcome.result.windows(window_s)
        first, last = windows[0], windows[-1]
        table.add_row(
            outcome.scenario.name, "idle", "", "", "", "", "", "",
            _mb(outcome.idle_rss_bytes), "", "", "",
        )  # fmt: skip
        for label, stats in ((_span(first), first), (_span(last), last)):
            table.add_row(
                "", label, f"{stats.rps:.0f}", _ms(stats.p50_ms), _ms(stats.p90_ms),
                _ms(stats.p99_ms), _ms(stats.p999_ms), _ms(stats.max_ms), _mb(stats.rss_peak_bytes),
                str(stats.errors),
                _ratio(last.p99_ms, first.p99_ms) if stats is last else "",
                _ratio(last.rss_peak_bytes, first.rss_peak_bytes) if stats is last else "",
            )  # fmt: skip
    return table


def timeline_table(outcomes: Sequence[Outcome], window_s: float, style: box.Box) -> Table:
    """p99, max and peak worker RSS of every window: the trend between first and last."""
    spans = [_span(w) for w in outcomes[0].result.windows(window_s)]
    table = Table(box=style, title=f"Every {window_s:g} s window")
    table.add_column("scenario")
    table.add_column("metric")
    for span in spans:
        table.add_column(span, justify="right")
    for outcome in outcomes:
        windows = outcome.result.windows(window_s)
        table.add_row(outcome.scenario.name, "p99 ms", *(_ms(w.p99_ms) for w in windows))
        table.add_row("", "max ms", *(_ms(w.max_ms) for w in windows))
        table.add_row("", "RSS MB", *(_mb(w.rss_peak_bytes) for w in windows))
    return table


def cpu_table(outcomes: Sequence[Outcome], style: box.Box) -> Table:
    """Who used the CPUs during each run: a busy "other processes" column flags a noisy run."""
    table = Table(box=style, title="CPU during each run, % of one CPU")
    table.add_column("scenario")
    for name in outcomes[0].cpu_shares:
        table.add_column(name, justify="right")
    for outcome in outcomes:
        table.add_row(outcome.scenario.name, *(f"{v:.0f}" for v in outcome.cpu_shares.values()))
    return table


def _span(stats: WindowStats) -> str:
    return f"{stats.start_s:g}-{stats.end_s:g} s"


def machine() -> str:
    """CPU count and model, Python and BentoML versions."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"BentoML {bentoml.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the three scenarios and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--quick", action="store_true", help="15 s runs, 5 s windows")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    args = parser.parse_args(argv)
    duration_s, window_s = (15.0, 5.0) if args.quick else (args.duration, 10.0)
    style = box.MARKDOWN if args.markdown else box.SIMPLE_HEAVY
    # `kill` and `timeout` send SIGTERM: clean up as for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console(width=None if sys.stdout.isatty() else 200)
    cpus = pin_cpus()
    console.print(f"Machine: {machine()}")
    console.print(f"Core split: {cpus.describe()}")
    console.print(f"Load: {args.connections} connections, {duration_s:g} s per scenario\n")
    try:
        with tempfile.TemporaryDirectory(prefix="featserve-bench-") as tmp, LocalRedis() as redis:
            workdir = Path(tmp)
            console.print("Training the model and writing demo features ...")
            train_small_model(workdir / "bentoml")
            load_features(redis.url, workdir / "demo")
            outcomes = []
            for scenario in scenarios(redis.url):
                console.print(f"Running {scenario.name} ...")
                outcomes.append(
                    run_scenario(
                        scenario, workdir / "bentoml", cpus, args.connections, duration_s, workdir
                    )
                )
    except KeyboardInterrupt:
        console.print("Interrupted: every process started was stopped.")
        return 130
    console.print()
    console.print(results_table(outcomes, window_s, style))
    console.print(timeline_table(outcomes, window_s, style))
    console.print(cpu_table(outcomes, style))
    console.print(
        "Windows are by send time; worker RSS is the peak of 1 s samples in the window, "
        "summed over bentoml serve's worker processes; idle is before the warm-up."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
