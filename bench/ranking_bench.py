"""A ranking request (one user, 100 candidate items) beside ``/score_batch`` of 100 users.

Usage: ``python -m bench.ranking_bench [--users 20000] [--rounds 4] [--round-s 5] [--cold]``

One Redis holds both example projects' demo data side by side (the ranking
project's keys carry its ``rank:`` prefix): ``--users`` users of each and five
times as many items.  Two ``bentoml serve`` processes at shipped settings, one
worker each: ``examples/ranking`` answering ``/score`` bodies of a random user
and 100 distinct random items, and ``examples/fraud`` answering ``/score_batch``
bodies of 100 random users.  Each round drives each server in turn from one
closed-loop connection, the first server one round and the other the next.
Printed: per case the median over rounds of p50, p90, p99 and max (ms) and of
real answers per second, the groups' source mix, and the ratio of the ranking
request's p50 and p99 to the batch's.  With 2 CPUs the servers are pinned to
the first (one is driven at a time), this process and Redis to the second.

``--cold`` serves with ``FEATSERVE_CACHE_TTL_S=0``: every group read from Redis, as when
no entity repeats within the cache's TTL (the bodies here repeat entities within 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.http_bench import own_home
from bench.load_run import LoadRun, WindowStats, closed_loop
from bench.machine import pin_cpus
from bench.report import markdown_table
from features.project_loader import load_project
from service.cli import sla
from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT, ROOT, start_service, stop, train_small_model

RANKING_PROJECT = ROOT / "examples" / "ranking"
CANDIDATES = 100


def source_mix(run: LoadRun) -> str:
    """The feature groups of every answer by source, in percent."""
    counts: Counter[str] = Counter()
    for sample in run.samples:
        if sample.mix is not None:
            counts.update(dict(sample.mix.sources))
    total = sum(counts.values()) or 1
    return ", ".join(f"{name} {100 * count / total:.0f} %" for name, count in counts.most_common())


def main(argv: Sequence[str] | None = None) -> int:
    """Load both projects' demo data, serve both, drive them in turns, print the medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.ranking_bench", description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-s", type=float, default=5.0)
    parser.add_argument("--cold", action="store_true", help="no cache: every group from Redis")
    args = parser.parse_args(argv)
    split = pin_cpus()
    cpus = None if split.server is None else str(split.server)
    ranking, fraud = load_project(RANKING_PROJECT), load_project(EXAMPLE_PROJECT)
    assert ranking.demo is not None and fraud.demo is not None
    users = [fraud.demo.entity_id(i) for i in range(args.users)]
    items = [ranking.demo.entity_id(i, "item") for i in range(5 * args.users)]
    payloads = {
        "ranking /score, 1 user + 100 items": sla.request_bodies(
            ranking, users, 0, 500, related={"item_ids": items}, candidates=CANDIDATES
        ),
        "fraud /score_batch, 100 users": sla.request_bodies(fraud, users, CANDIDATES, 500),
    }
    runs: dict[str, list[tuple[WindowStats, LoadRun]]] = {}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="featserve-rb-")))
        shared = scratch / "home"
        redis_server = stack.enter_context(LocalRedis())
        for project in (RANKING_PROJECT, EXAMPLE_PROJECT):
            train_small_model(shared, project)
            with contextlib.redirect_stderr(io.StringIO()):
                load_demo_data(
                    redis_server.url, args.users, scratch / project.name, project=project
                )
        urls = {}
        for (name, _), project, path in zip(
            payloads.items(),
            (RANKING_PROJECT, EXAMPLE_PROJECT),
            ("/score", "/score_batch"),
            strict=True,
        ):
            home = own_home(shared, scratch / f"home-{project.name}")
            cold = {"FEATSERVE_CACHE_TTL_S": "0"} if args.cold else {}
            process, url, _ = start_service(
                home, redis_server, scratch, cpus=cpus, FEATSERVE_PROJECT=str(project), **cold
            )
            stack.callback(stop, process)
            urls[name] = f"{url}{path}"
        for round_index in range(args.rounds):
            order = list(urls.items())[:: 1 if round_index % 2 == 0 else -1]
            for name, url in order:
                run = asyncio.run(closed_loop(url, payloads[name], 1, args.round_s, warmup_s=1.0))
                runs.setdefault(name, []).append((run.window(0.0, args.round_s), run))
    print(
        f"{split.describe()}; {args.rounds} rounds of {args.round_s:g} s per case, 1 connection\n"
    )
    rows = []
    for name, measured in runs.items():
        windows = [window for window, _ in measured]
        rows.append(
            [
                name,
                *(
                    f"{statistics.median(getattr(w, field) for w in windows):.2f}"
                    for field in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                ),
                f"{statistics.median(w.real_rps for w in windows):.0f}",
                f"{sum(w.errors for w in windows)}",
                source_mix(LoadRun.joined([run for _, run in measured])),
            ]
        )
    header = ["case", "p50 ms", "p90 ms", "p99 ms", "max ms", "real/s", "errors", "groups from"]
    print(markdown_table(header, rows))
    ranked, batched = ([w for w, _ in measured] for measured in runs.values())
    for field in ("p50_ms", "p99_ms"):
        ratio = statistics.median(getattr(w, field) for w in ranked) / statistics.median(
            getattr(w, field) for w in batched
        )
        print(f"ranking / batch {field}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
