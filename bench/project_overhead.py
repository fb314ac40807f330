"""The generic (project) path against the code before projects, served side by side.

Usage: ``python -m bench.project_overhead [--base c67b360] [--rounds 6] [--round-s 5]``
(``--base-service service.service:ScoringService`` for a base after projects)

Two ``bentoml serve`` processes, one worker each, over one Redis holding the
fraud example's demo users and one small model: this tree's
``ScoringService`` serving ``examples/fraud``, and the tree at ``--base`` (the
last commit before projects; ``git archive`` into a temporary folder, served
from there with this virtualenv) serving its ``FraudScorer``.  Both answer
the same ``/score`` bodies.  Each round drives each server in turn (closed
loop, keep-alive) at 1 connection and at 16, the first server one round and
the other the next; rounds interleave so a slow moment of the shared machine
falls on both.  Printed: per server and
connection count, the median over rounds of p50, p90, p99 and max (ms) and
of real answers per second, then the ratio of this tree to the base.
With 2 CPUs the servers are pinned to the first (only one is driven at a
time) and this process, the load generator, and Redis to the second.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.http_bench import bodies, own_home
from bench.load_run import WindowStats, closed_loop
from bench.machine import pin_cpus
from bench.report import markdown_table
from bench.resolver_bench import demo_redis
from service.harness.served import ROOT, start_service, stop, train_small_model

USERS = 2000
CONNECTIONS = (1, 16)


def checkout(commit: str, into: Path) -> Path:
    """The tree of ``commit`` unpacked into ``into`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def main(argv: Sequence[str] | None = None) -> int:
    """Serve both, drive them in interleaved rounds, print the medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.project_overhead", description=__doc__)
    parser.add_argument("--base", default="c67b360", help="the commit before projects")
    parser.add_argument(
        "--base-service",
        default="service.service:FraudScorer",
        help="the service class at --base (service.service:ScoringService after projects)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    split = pin_cpus()
    cpus = None if split.server is None else str(split.server)
    payloads = bodies(0)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="featserve-po-")))
        base = checkout(args.base, scratch / "base")
        shared = scratch / "home"
        train_small_model(shared)
        redis_server = stack.enter_context(demo_redis(USERS))
        served: dict[str, str] = {}
        for name, target, cwd in (
            ("projects", "service.service:ScoringService", ROOT),
            (f"base {args.base}", args.base_service, base),
        ):
            home = own_home(shared, scratch / f"home-{len(served)}")
            process, url, _ = start_service(
                home, redis_server, scratch, target=target, cwd=cwd, cpus=cpus
            )
            stack.callback(stop, process)
            served[name] = f"{url}/score"
        stats: dict[tuple[str, int], list[WindowStats]] = {}
        for round_index in range(args.rounds):
            # Alternate which server goes first, so an order effect falls on both alike.
            order = list(served.items())[:: 1 if round_index % 2 == 0 else -1]
            for connections in CONNECTIONS:
                for name, url in order:
                    run = asyncio.run(
                        closed_loop(url, payloads, connections, args.round_s, warmup_s=1.0)
                    )
                    stats.setdefault((name, connections), []).append(run.window(0.0, args.round_s))
    print(f"{split.describe()}; {args.rounds} rounds of {args.round_s:g} s per case\n")
    rows = []
    for (name, connections), windows in stats.items():
        rows.append(
            [
                name,
                str(connections),
                *(
                    f"{statistics.median(getattr(w, field) for w in windows):.3f}"
                    for field in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                ),
                f"{statistics.median(w.real_rps for w in windows):.0f}",
                f"{sum(w.errors for w in windows)}",
            ]
        )
    header = ["server", "connections", "p50 ms", "p90 ms", "p99 ms", "max ms", "real/s", "errors"]
    print(markdown_table(header, rows))
    names = list(dict.fromkeys(name for name, _ in stats))
    print()
    for connections in CONNECTIONS:
        mine, theirs = (stats[(name, connections)] for name in names)
        for field in ("p50_ms", "p99_ms", "real_rps"):
            ratio = statistics.median(getattr(w, field) for w in mine) / statistics.median(
                getattr(w, field) for w in theirs
            )
            print(f"{connections} connection(s): {field} projects / base = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
