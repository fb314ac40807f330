"""Choosing ``FEATSERVE_MAX_IN_FLIGHT``: real answers and latency for several bounds.

Usage: ``python -m bench.admission_bench [--quick]`` (starts Redis, trains a small model, serves)

One-worker featserve servers at the shipped defaults but for the bound on
requests in flight, one per bound in ``LIMITS`` (0: no bound), and one with
BentoML's own ``traffic.max_concurrency`` instead
(``bench/bentoml_limit_service.py``), all up at once on CPU 0 with the load
generator and Redis on CPU 1.  Each is driven with ``/score`` at 16 and 64
closed-loop connections, in ``ROUNDS`` interleaved rounds of 2 s (one with
``--quick``).  For each: requests per second, real answers per second (every
feature group from Redis or the cache), the share refused, and the latency
of the answers.  The default should keep real answers per second near the
best while the answers' p99 stays within the fraud profile's total budget.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.http_bench import USERS, bodies, own_home
from bench.load_run import LoadRun, WindowStats, closed_loop
from bench.machine import pin_cpus
from bench.report import Section, markdown_table
from bench.resolver_bench import demo_redis
from service.harness.served import running_service, train_small_model

__all__ = ["LIMITS", "LimitRun", "measure", "section"]

LIMITS = (4, 8, 16, 24, 0)
"""``FEATSERVE_MAX_IN_FLIGHT`` values tried; 0 admits everything.  The service refuses to start
with more than the Redis breaker lets read at once (32 connections x 0.8 = 25.6)."""

BENTOML_LIMIT = 16
"""The bound given to BentoML's ``traffic.max_concurrency`` for the comparison."""

CONNECTIONS = (16, 64)
ROUNDS = 3
ROUND_S = 2.0


@dataclass(frozen=True)
class Limiter:
    """One server: which bound, enforced by whom."""

    by: str
    """``featserve`` (its admission middleware) or ``bentoml`` (``traffic.max_concurrency``)."""
    limit: int

    @property
    def name(self) -> str:
        """How the report names it."""
        return f"{self.by} {self.limit or 'none'}"


@dataclass(frozen=True)
class LimitRun:
    """One server at one number of connections."""

    limiter: Limiter
    connections: int
    stats: WindowStats


def _limiters() -> list[Limiter]:
    return [Limiter("featserve", limit) for limit in LIMITS] + [Limiter("bentoml", BENTOML_LIMIT)]


def measure(
    bentoml_home: Path, redis_url: str, server_cpu: int | None, quick: bool, log_dir: Path
) -> list[LimitRun]:
    """Serve every bound at once and load each in interleaved rounds."""
    payloads = bodies(0)
    limiters = _limiters()
    parts: dict[tuple[int, int], list[LoadRun]] = {}
    cpus = None if server_cpu is None else str(server_cpu)
    with ExitStack() as stack:
        urls = []
        for limiter in limiters:
            home = own_home(bentoml_home, log_dir / f"limit-{limiter.by}-{limiter.limit}")
            env = {"REDIS_URL": redis_url}
            if limiter.by == "featserve":
                service = "service.service:ScoringService"
                env |= {"FEATSERVE_MAX_IN_FLIGHT": str(limiter.limit)}
            else:
                service = "bench.bentoml_limit_service:LimitedScorer"
                env |= {"FEATSERVE_MAX_IN_FLIGHT": "0", "BENCH_MAX_CONCURRENCY": str(limiter.limit)}
            _, url = stack.enter_context(running_service(home, None, log_dir, service, cpus, **env))
            urls.append(url + "/score")
        for round_index in range(1 if quick else ROUNDS):
            for connections in CONNECTIONS:
                for offset in range(len(limiters)):
                    index = (round_index + offset) % len(limiters)
                    result = asyncio.run(
                        closed_loop(urls[index], payloads, connections, ROUND_S, warmup_s=0.5)
                    )
                    parts.setdefault((index, connections), []).append(result)
    runs = []
    for (index, connections), results in sorted(parts.items()):
        whole = LoadRun.joined(results)
        runs.append(LimitRun(limiters[index], connections, whole.window(0.0, whole.duration_s)))
    return runs


def section(runs: list[LimitRun], split_text: str) -> Section:
    """The sweep as one table."""
    rows = [
        [
            run.limiter.name, str(run.connections), f"{run.stats.rps:,.0f}",
            f"{run.stats.real_rps:,.0f}", f"{run.stats.refused_share:.0%}",
            f"{run.stats.p50_ms:.1f}", f"{run.stats.p99_ms:.1f}", str(run.stats.errors),
        ]
        for run in runs
    ]  # fmt: skip
    table = markdown_table(
        ["bound (by)", "connections", "req/s", "real/s", "refused", "p50 ms", "p99 ms", "errors"],
        rows,
        left=2,
    )
    return Section(
        "Requests in flight per worker: FEATSERVE_MAX_IN_FLIGHT",
        "One-worker featserve servers at the shipped defaults but for the bound on requests "
        "in flight (`featserve N`: its admission middleware, 503 with `Retry-After`; "
        f"`bentoml {BENTOML_LIMIT}`: BentoML's `traffic.max_concurrency`, 429), all up at once, "
        "`/score` from closed-loop keep-alive connections that send again at once after a "
        "refusal (they ignore `Retry-After`: the worst case), in interleaved rounds. "
        "`real/s` counts answers whose features all came from Redis or the cache; latencies "
        f"are those of the 200 answers. Core split: {split_text}",
        [table],
    )


def main(argv: list[str] | None = None) -> int:
    """Start Redis and a model, sweep the bounds, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args(argv)
    cpus = pin_cpus()
    with (
        tempfile.TemporaryDirectory(prefix="featserve-bench-") as tmp,
        demo_redis(USERS) as redis_server,
    ):
        train_small_model(Path(tmp) / "bentoml")
        runs = measure(Path(tmp) / "bentoml", redis_server.url, cpus.server, args.quick, Path(tmp))
    print(section(runs, cpus.describe() + ".").markdown(Path("docs")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
