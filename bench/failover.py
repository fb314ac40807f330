"""Failover drills with figures: ``make faults`` runs it after ``bench.faults``
(``python -m bench.failover [--quick] [--runs 2]``).

Serves the ScoringService over a real Redis Cluster (3 primaries, 3 replicas,
``cluster-node-timeout`` 2 s) and over a real Sentinel setup (a primary, two
replicas, three sentinels, ``down-after-milliseconds`` 1 s), drives steady
``/score`` load, kills a primary, and measures the time to the promotion,
the time until the lost primary's entities are read from Redis again, and
the answers by source, for the lost shard's entities and for the others.
It replaces the part of ``docs/reliability.md`` between the ``failover``
markers (appending it the first time); ``bench.faults`` rewrites the rest and keeps it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.report import MarkedSection, machine_lines, markdown_table
from features.settings import Settings
from service.cli.demo import load_demo_data
from service.harness.failover_drill import FailoverResult, run_failover
from service.harness.fault_drill import Load, score_bodies
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis
from service.harness.local_sentinel import MASTER_NAME, LocalSentinels
from service.harness.served import EXAMPLE_PROJECT, ROOT, start_service, stop, train_small_model
from service.harness.waiting import wait_until

DOC = ROOT / "docs" / "reliability.md"
SECTION = MarkedSection("failover", "python -m bench.failover")
USERS = 300


@dataclass(frozen=True)
class Drill:
    """One kill: which setup, and what was seen."""

    setup: str
    result: FailoverResult


def _ids() -> list[str]:
    return [f"u{i:06d}" for i in range(USERS)]


def _key(entity_id: str) -> str:
    return f"user:{{{entity_id}}}:features"


@contextlib.contextmanager
def _load(url: str, rate: float) -> Iterator[Load]:
    driver = Load(url, score_bodies(_ids()), rate=rate, connections=2).start()
    try:
        wait_until(lambda: len(driver.answers()) >= 200, 60, 0.05)
        yield driver
    finally:
        driver.stop()


def cluster_drills(home: Path, work: Path, runs: int, args: argparse.Namespace) -> list[Drill]:
    """Kill a primary of a cluster ``runs`` times, bringing it back as a replica between."""
    drills = []
    with LocalCluster() as cluster:
        settings = Settings(redis_url=cluster.url, redis_mode="cluster")
        with contextlib.redirect_stderr(io.StringIO()):
            load_demo_data(None, USERS, work / "cluster-demo", settings, project=EXAMPLE_PROJECT)
        process, url, _ = start_service(
            home, cluster.nodes[0], work, REDIS_URL=cluster.url, FEATSERVE_REDIS_MODE="cluster",
            FEATSERVE_CACHE_TTL_S="0", FEATSERVE_FEATURE_DEADLINE_MS=str(args.deadline_ms),
        )  # fmt: skip
        try:
            with _load(url, args.rate) as driver:
                for run in range(runs):
                    victim = cluster.primaries()[run % 3]
                    held = [u for u in _ids() if cluster.primary_for(_key(u)) == victim]
                    result = run_failover(
                        driver,
                        victim.kill,
                        partial(_moved_away, cluster, _key(held[0]), victim),
                        affected=held,
                        before_s=args.before_s,
                        settle_s=args.settle_s,
                        strict=False,
                    )
                    drills.append(Drill("cluster", result))
                    print(_summary(drills[-1]), flush=True)
                    victim.start()  # it rejoins as a replica of the promoted node
                    cluster.wait_until_healthy()
        finally:
            stop(process)
    return drills


def sentinel_drills(home: Path, work: Path, runs: int, args: argparse.Namespace) -> list[Drill]:
    """Kill the primary behind Sentinel ``runs`` times, bringing it back as a replica between."""
    drills = []
    with LocalSentinels() as setup:
        where = {
            "FEATSERVE_REDIS_MODE": "sentinel",
            "FEATSERVE_SENTINELS": setup.sentinel_addresses,
            "FEATSERVE_SENTINEL_MASTER": MASTER_NAME,
        }
        settings = Settings(
            redis_mode="sentinel", sentinels=setup.sentinel_addresses, sentinel_master=MASTER_NAME
        )
        with contextlib.redirect_stderr(io.StringIO()):
            load_demo_data(None, USERS, work / "sentinel-demo", settings, project=EXAMPLE_PROJECT)
        process, url, _ = start_service(
            home, setup.primary(), work, **where, FEATSERVE_CACHE_TTL_S="0",
            FEATSERVE_FEATURE_DEADLINE_MS=str(args.deadline_ms),
        )  # fmt: skip
        try:
            with _load(url, args.rate) as driver:
                for _ in range(runs):
                    victim = setup.primary()
                    result = run_failover(
                        driver,
                        victim.kill,
                        partial(_switched_away, setup, victim),
                        before_s=args.before_s,
                        settle_s=args.settle_s,
                        strict=False,
                    )
                    drills.append(Drill("sentinel", result))
                    print(_summary(drills[-1]), flush=True)
                    setup.restart_as_replica(victim)
        finally:
            stop(process)
    return drills


def _moved_away(cluster: LocalCluster, key: str, victim: LocalRedis) -> bool:
    return cluster.primary_for(key) != victim


def _switched_away(setup: LocalSentinels, victim: LocalRedis) -> bool:
    return setup.primary() != victim


def _summary(drill: Drill) -> str:
    r = drill.result
    return (
        f"{drill.setup}: promoted after {_s(r.promoted_after_s)}, first answer from Redis "
        f"after {_s(r.first_redis_after_s)}, refused {len(r.refused)}"
    )


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _sources(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.most_common()) or "-"


def report(drills: Sequence[Drill], args: argparse.Namespace) -> str:
    """The Markdown section, between its markers."""
    rows = []
    for number, drill in enumerate(drills, 1):
        r = drill.result
        statuses = Counter(s.status for s in (*r.before, *r.after))
        until = r.first_redis_after_s
        lost = Counter(
            s.source or f"status {s.status}"
            for s in r.after
            if r.is_affected(s) and (until is None or s.sent_at - r.killed_at < until)
        )
        rows.append(
            [
                f"{drill.setup} #{number}",
                _s(r.promoted_after_s),
                _s(r.first_redis_after_s),
                _s(
                    None
                    if until is None or r.promoted_after_s is None
                    else max(0.0, until - r.promoted_after_s)
                ),
                ", ".join(f"{code} x{n}" for code, n in sorted(statuses.items())),
                _sources(Counter(s.source or f"status {s.status}" for s in r.before)),
                _sources(lost),
                "all of them" if r.affected is None else _sources(r.sources_unaffected),
                _sources(r.sources_recovered),
            ]
        )
    table = markdown_table(
        ["drill", "promoted after", "Redis again after", "after the promotion", "statuses",
         "every entity before the kill", "lost shard's entities until then",
         "other shards' entities after the kill", "every entity after that"],
        rows,
    )  # fmt: skip
    return SECTION.wrap(f"""## Failover: a primary killed under load

Generated by `python -m bench.failover` (part of `make faults`). `make test` runs one drill
of each, shorter, as `tests/e2e/test_cluster.py` and `tests/e2e/test_sentinel.py`, and
asserts on it.

{chr(10).join(machine_lines())}

**Setup.** One `bentoml serve` worker over a Redis Cluster of 3 primaries and 3 replicas
(`cluster-node-timeout 2000`, `cluster-require-full-coverage no`; `REDIS_URL` names one
node, the first one killed) and over a primary, two replicas and three sentinels
(`down-after-milliseconds 1000`), all on loopback. Load: {args.rate:g} requests/s over 2
connections (`POST /score`, random users among {USERS}), cache TTL 0, feature deadline
{args.deadline_ms:g} ms. Each drill: {args.before_s:g} s of load, then a primary is killed
(`SIGKILL`); the drill watches until the lost primary's entities have been read from Redis
again and for {args.settle_s:g} s more. Between drills the killed node comes back as a replica.
Times are from the kill; "Redis again" is when a request for the lost primary's entities
was first answered from Redis.

{table}

**Reading it.** On the cluster only the lost primary's entities fall back (to the
worker's last values, `stale`, or the training defaults, `unavailable`, each with
its `degraded` reason); the others keep coming from
Redis. The cluster promotes the replica 3 to 4 s after the kill (2 s node timeout, the
failure report agreed by a majority, then the replica's election after a random
0.5-1 s); the store, whose breaker for the dead node probes it every
second and which reloads the slot map in the background at most every 0.5 s, reads the
promoted node from then on. Behind Sentinel every entity lives on the one primary, so
every request falls back until the sentinels have switched (1 s down-after, then the
failover), and the next connection the pool opens reaches the new primary. Answers from
`stale` outside a failover (before the kill, or for the other shards) come from this
machine, not the topology: with a 10 ms deadline, the worker and nine Redis processes on 2
CPUs shared with other work miss it now and then (in a busy hour up to a fifth of
the cluster's answers, as many before a kill as after it); compare them with the "before"
column of the same drill.
""")


def main(argv: list[str] | None = None) -> int:
    """Run the drills and write the section."""
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one drill of each, short phases")
    parser.add_argument("--runs", type=int, default=2, help="drills per setup")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s, all connections")
    parser.add_argument("--deadline-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    args.before_s, args.settle_s = (2.0, 2.0) if args.quick else (5.0, 5.0)
    with tempfile.TemporaryDirectory(prefix="featserve-failover-") as scratch:
        work = Path(scratch)
        train_small_model(work / "bentoml")
        drills = cluster_drills(work / "bentoml", work, runs, args)
        drills += sentinel_drills(work / "bentoml", work, runs, args)
    SECTION.write(args.out, report(drills, args))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
