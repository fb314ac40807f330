"""Fault drills with figures: ``make faults`` (``python -m bench.faults [--quick]``).

Serves the FraudScorer (one worker, pinned to CPU 0) over a real Redis
behind a controllable TCP proxy, drives steady ``/score`` load from another
process (CPU 1, with Redis and the proxy), and for each fault (added
latency, blackhole, connection resets, SIGSTOP, kill and restart) measures
three phases: before, during, after. It writes the figures, per phase
p50/p99/max of the feature stage, p99 of the whole request, failures, the
sources served, whether the breaker opened and closed, and the time to
read from Redis again, to ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.stall_watch import STALL_S, Stall, StallWatch, overlapping
from service.harness.fault_drill import DrillResult, PhaseStats, run_drill
from service.harness.fault_rig import FAULTS, open_rig
from service.harness.served import ROOT, train_small_model

DOC = ROOT / "docs" / "reliability.md"

IN_FLIGHT_MARGIN_S = 0.05
"""How long after its feature stage a request may still be in flight (HTTP, queueing)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run every drill and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke check")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s per connection")
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
    during_s, after_s = (1.5, 0.5) if args.quick else (10.0, 5.0)
    with tempfile.TemporaryDirectory(prefix="featserve-faults-") as scratch:
        work = Path(scratch)
        train_small_model(work / "bentoml")
        # The server's CPU (open_rig pins the service to CPU 0).
        watch = StallWatch(work / "stalls.txt", cpu=0) if args.watch_cpu else None
        with (
            watch.running() if watch is not None else contextlib.nullcontext(),
            open_rig(
                work / "bentoml",
                work,
                connections=args.connections,
                rate=args.rate,
                deadline_ms=args.deadline_ms,
            ) as rig,
        ):
            results = []
            for name, build in FAULTS.items():
                print(f"drill: {name}", flush=True)
                result = run_drill(rig.url, rig.driver, build(rig), 2.0, during_s, after_s)
                results.append(result)
                print(_table([result]), flush=True)
        stalls = watch.stalls() if watch is not None else None
    args.out.write_text(_report(results, args, during_s, stalls))
    print(f"wrote {args.out}")
    return 0


def _table(results: Sequence[DrillResult]) -> str:
    lines = [
        "| fault | phase | requests | failed | features p50 ms | features p99 ms "
        "| features max ms | total p99 ms | sources |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for phase in result.phases:
            sources = ", ".join(f"{k} {v}" for k, v in phase.sources.most_common())
            lines.append(
                f"| {result.fault} | {phase.name} | {phase.requests} | {phase.failed} "
                f"| {phase.features_p50_ms:.2f} | {phase.features_p99_ms:.2f} "
                f"| {phase.features_max_ms:.2f} | {phase.total_p99_ms:.2f} | {sources} |"
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
        f"Not held in {len(over)} of {3 * len(results)} phases, by their slowest request: "
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
    results: Sequence[DrillResult],
    args: argparse.Namespace,
    during_s: float,
    stalls: list[Stall] | None,
) -> str:
    return f"""# Reliability: fault drills

Generated by `make faults` (`.venv/bin/python -m bench.faults`); rerun it to
refresh every figure here. `make test` runs the same drills, shorter, as
`tests/e2e/test_faults.py`, and asserts on them.

**Setup.** One `bentoml serve` worker pinned to CPU 0 (`taskset`); Redis, a
Python TCP proxy in front of it, and the load generator on CPU 1. Machine:
{_machine()}. Load: {args.connections} connections at {args.rate:g} requests/s each
(`POST /score`, random users among 200), cache TTL 0 so every request asks the
tiers, feature deadline {args.deadline_ms:g} ms, breaker: 3 consecutive failures,
0.5 s open. Each drill: 2 s before, {during_s:g} s with the fault, then until a
request is answered from Redis again, plus a little more.

## Requests by phase

{_table(results)}

## Breaker and recovery

{_recovery_table(results)}

## The deadline target

Target: no request's feature stage more than 2 ms past the
{args.deadline_ms:g} ms deadline. {_deadline_verdict(results, args.deadline_ms + 2, stalls)}
{_stall_summary(stalls)}

Reading the tables: during a fault the breaker skips Redis after three
failures, so most requests are answered at once from the last values this
worker saw (`stale`, within the group's freshness window) or the training
defaults; the requests that do wait on Redis end at the deadline. Both
times are what the service measured and reported in `Server-Timing`:
`features` is feature resolution, `total` the whole request inside the
service.
"""


if __name__ == "__main__":
    raise SystemExit(main())
