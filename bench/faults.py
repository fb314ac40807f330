"""Fault drills with figures: ``make faults`` (``python -m bench.faults [--quick]``).

Serves the ScoringService (one worker, pinned to CPU 0) over a real Redis
behind a controllable TCP proxy, drives steady ``/score`` load from CPU 1
(with Redis and the proxy), and for each fault (added latency, blackhole,
connection resets, SIGSTOP, kill and restart) measures the phases of
``service.harness.fault_drill``: before, during, recovering, after.  It runs
every fault on two rigs: the cache off and no backing store (stale values
stand in), and the cache on with a SQLite backing store that is then locked
too.  It writes the figures, per phase: answers real, degraded and with a
wrong score, p50/p99/max of the feature stage, p99 of the whole request,
the oldest stale value served, the sources; whether the breaker opened and
closed, and the time to read from Redis again, to ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.report import marked_sections
from bench.stall_watch import STALL_S, Stall, StallWatch, overlapping
from service.harness.fault_drill import DrillResult, PhaseStats, run_drill
from service.harness.fault_rig import FAULTS, backing_lock, open_rig
from service.harness.served import ROOT, train_small_model

DOC = ROOT / "docs" / "reliability.md"

IN_FLIGHT_MARGIN_S = 0.05
"""How long after its feature stage a request may still be in flight (HTTP, queueing)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run every drill and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke check")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s over all connections")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--deadline-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument(
        "--watch-cpu",
        action="store_true",
        help="run bench/stall_watch.py on the server's CPU and say, for each overrun, whether"
        " that CPU stalled (its 1 kHz wake-ups also disturb the worker a little)",
    )
    args = parser.parse_args(argv)
    during_s, after_s = (1.5, 1.2) if args.quick else (10.0, 5.0)
    results: dict[str, list[DrillResult]] = {}
    with tempfile.TemporaryDirectory(prefix="featserve-faults-") as scratch:
        work = Path(scratch)
        train_small_model(work / "bentoml")
        # The server's CPU (open_rig pins the service to CPU 0).
        watch = StallWatch(work / "stalls.txt", cpu=0) if args.watch_cpu else None
        with watch.running() if watch is not None else contextlib.nullcontext():
            for rig_name, backed in RIGS.items():
                rig_dir = work / ("backed" if backed else "stale")
                rig_dir.mkdir()
                with open_rig(
                    work / "bentoml",
                    rig_dir,
                    connections=args.connections,
                    rate=args.rate,
                    deadline_ms=args.deadline_ms,
                    cache_ttl_s=1.0 if backed else 0.0,
                    backing=backed,
                ) as rig:
                    drills = results.setdefault(rig_name, [])
                    for name, build in FAULTS.items():
                        print(f"drill: {rig_name}: {name}", flush=True)
                        result = run_drill(
                            rig.url,
                            rig.load,
                            build(rig),
                            rig.scores,
                            backing_fault=backing_lock(rig) if backed else None,
                            before_s=2.0,
                            during_s=during_s,
                            backing_down_s=during_s / 2,
                            after_s=after_s,
                        )
                        drills.append(result)
                        print(_table([result]), flush=True)
        stalls = watch.stalls() if watch is not None else None
    # The sections other commands write (bench.failover, bench.soak) stay as they were.
    kept = marked_sections(args.out.read_text()) if args.out.exists() else ""
    report = _report(results, args, during_s, after_s, stalls)
    args.out.write_text(report.rstrip("\n") + ("\n\n" + kept if kept else "\n"))
    print(f"wrote {args.out}")
    return 0


RIGS = {
    "stale values alone (cache off, no backing store)": False,
    "cache on (1 s) and a SQLite backing store": True,
}
"""The two rigs, by the title of their section: whether each has the cache and a backing store."""


def _ms(value: float) -> str:
    """A time in a table cell: ``-`` for a phase without answers (its percentile is NaN)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def _table(results: Sequence[DrillResult]) -> str:
    lines = [
        "| fault | phase | requests | failed | real | degraded | wrong scores "
        "| features p50 ms | features p99 ms | features max ms | total p99 ms "
        "| oldest stale s | sources |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for phase in result.phases:
            sources = ", ".join(f"{k} {v}" for k, v in phase.sources.most_common())
            oldest = "-" if phase.stale_age_max_s is None else f"{phase.stale_age_max_s:.1f}"
            lines.append(
                f"| {result.fault} | {phase.name} | {phase.requests} | {phase.failed} "
                f"| {phase.real} | {phase.degraded} | {phase.wrong_scores} "
                f"| {_ms(phase.features_p50_ms)} | {_ms(phase.features_p99_ms)} "
                f"| {_ms(phase.features_max_ms)} | {_ms(phase.total_p99_ms)} | {oldest} "
                f"| {sources or '-'} |"
            )
    return "\n".join(lines)


def _recovery_table(results: Sequence[DrillResult]) -> str:
    lines = [
        "| fault | breaker opened | breaker closed after | back on Redis after |",
        "|---|---|---|---|",
    ]
    for result in results:
        back = "never" if result.recovery_s is None else f"{result.recovery_s:.2f} s"
        lines.append(
            f"| {result.fault} | {'yes' if result.breaker_opened else 'no'} "
            f"| {'yes' if result.breaker_closed_after else 'no'} | {back} |"
        )
    return "\n".join(lines)


def _deadline_verdict(
    results: Sequence[DrillResult], limit_ms: float, stalls: list[Stall] | None
) -> str:
    over = [
        f"{result.fault} ({phase.name}): {phase.features_max_ms:.2f} ms{_stall_note(phase, stalls)}"
        for result in results
        for phase in result.phases
        if phase.features_max_ms > limit_ms
    ]
    if not over:
        return f"Held: every feature stage ended within {limit_ms:g} ms."
    return (
        f"Not held in {len(over)} of {sum(len(r.phases) for r in results)} phases, by their"
        " slowest request: "
        + "; ".join(over)
        + ". The rest of those phases stayed within it (see p99). A stage overruns when the "
        "worker's event loop is busy with another request as the deadline fires (the"
        " service is single-threaded per worker, so a deadline cannot interrupt other"
        " requests' Python code), or when the CPU is taken away (`--watch-cpu` checks"
        " the server's CPU with `bench/stall_watch.py`)."
    )


def _stall_note(phase: PhaseStats, stalls: list[Stall] | None) -> str:
    """Which stalls of the server's CPU happened while the slowest request was in flight."""
    if stalls is None or phase.slowest_sent_at is None:
        return ""
    window_end = phase.slowest_sent_at + phase.features_max_ms / 1000 + IN_FLIGHT_MARGIN_S
    seen = overlapping(stalls, phase.slowest_sent_at, window_end)
    if not seen:
        return " (no stall of the server's CPU meanwhile)"
    longest_ms = max(end - start for start, end in seen) * 1000
    return f" (the server's CPU stalled for {longest_ms:.1f} ms meanwhile)"


def _stall_summary(stalls: list[Stall] | None) -> str:
    if stalls is None:
        return ""
    longest_ms = max((end - start for start, end in stalls), default=0.0) * 1000
    return (
        f"The watcher on the server's CPU missed its wake-up by more than {STALL_S * 1000:g} ms"
        f" {len(stalls)} times while the service ran, start-up included (CFS may delay it"
        f" behind the busy worker by a few ms; longest {longest_ms:.1f} ms)."
    )


def _machine() -> str:
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in model.splitlines()
                 if line.startswith("Model name")), "unknown")  # fmt: skip
    return f"{name}, Python {platform.python_version()}"


def _report(
    results: dict[str, list[DrillResult]],
    args: argparse.Namespace,
    during_s: float,
    after_s: float,
    stalls: list[Stall] | None,
) -> str:
    every = [result for drills in results.values() for result in drills]
    sections = "\n\n".join(
        f"## {title}\n\n### Requests by phase\n\n{_table(drills)}\n\n"
        f"### Breaker and recovery\n\n{_recovery_table(drills)}"
        for title, drills in results.items()
    )
    return f"""# Reliability: fault drills

Generated by `make faults` (`.venv/bin/python -m bench.faults`); rerun it to
refresh every figure here. `make test` runs the same drills, shorter, as
`tests/e2e/test_faults.py`, and asserts on every answer.

**Setup.** One `bentoml serve` worker pinned to CPU 0 (`taskset`); Redis, a
Python TCP proxy in front of it (in a process of its own; it and Redis under
real-time scheduling when allowed), and the load generator on CPU 1. Machine:
{_machine()}. Load: {args.rate:g} requests/s over {args.connections} connections
(`POST /score`, random users among 200, each user's values written by the rig
and read once before any fault), feature deadline {args.deadline_ms:g} ms, Redis
socket timeout 2 s (so only the deadline ends a wait), breaker: 3 consecutive
failures, 0.5 s open. Two rigs: the cache off and no backing store, so every
request asks Redis and stale values are all that stands in; and the cache on
(1 s TTL) with a SQLite backing store, which is locked by another process for
the second half of each fault (`backing down too`). Each drill: 2 s before,
{during_s:g} s with the fault (the backed rig: then {during_s / 2:g} s with
the backing store locked too), then until a request is answered from Redis
again (`recovering`), then {after_s:g} s more (`after`).

Columns: `real` answers came from Redis or the cache; `degraded` answers
said a fault shaped them; `wrong scores` differ from the score their user
got from Redis before any fault (a fallback serving other values than the
user's own); `oldest stale s` is the largest `stale_age_s` served.

{sections}

## The deadline target

Target: no request's feature stage more than 2 ms past the
{args.deadline_ms:g} ms deadline. {_deadline_verdict(every, args.deadline_ms + 2, stalls)}
{_stall_summary(stalls)}

Reading the tables: during a fault the breaker skips Redis after three
failures, so most requests are answered at once from the backing store
(`backing`, when there is one) or the last values this worker read (`stale`,
within the group's freshness window); the requests that do wait on Redis end
at the deadline, with no time left to ask the backing store, and answer
stale. Both times are what the service measured and reported in
`Server-Timing`: `features` is feature resolution, `total` the whole request
inside the service.
"""


if __name__ == "__main__":
    raise SystemExit(main())
