"""``featserve sla``: drive a bounded load at a deployment and check its p99 against a budget.

Usage::

    featserve sla --url http://127.0.0.1:3000/score --profile fraud --rate 200 --duration 10
    featserve sla --url URL --total-ms 50 --features-ms 10 --concurrency 8 --plot sla.png

Requests go to ``--url`` only, with ``/score`` bodies for random entities
(``--batch N``: ``/score_batch`` bodies of N entities each).  Each
response's ``Server-Timing`` header gives the server's stages.  The verdict
compares, at p99, the latency the client saw with the total budget and the
``features`` stage with the feature budget (``--profile`` gives both, from
``features.budgets``; ``--total-ms`` and ``--features-ms`` override).  The
exit code is 0 when both hold and every answer was 2xx, 1 on any breach,
non-2xx answer, failed request or missing ``features`` timing, 2 on bad
arguments.  When the environment holds ``FEATSERVE_READ_TOKEN`` (or else
``FEATSERVE_WRITE_TOKEN``), every request carries it as a bearer token.
The run stops by itself after ``--duration`` seconds (at most 600) or
``--max-requests`` requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from features.budgets import PROFILES, LatencyBudget
from features.redaction import redact
from service.harness.load import MAX_DURATION_S, Endpoint, LoadPlan, Sample, drive

__all__ = ["Check", "Verdict", "entity_ids", "evaluate", "register", "request_bodies", "run"]

EXIT_BREACH = 1
EXIT_USAGE = 2

CLIENT = "client"
"""The row of the latency the load generator measured, end to end."""

FEATURES = "features"
"""The ``Server-Timing`` stage checked against the feature budget."""

_RANGE = re.compile(r"^(?P<prefix>\D*)(?P<first>\d+)\.\.(?P=prefix)(?P<last>\d+)$")


def entity_ids(spec: str) -> list[str]:
    """``"u000000..u009999"`` (same prefix, zero-padded as the first) or a count ``"500"``.

    A count ``n`` means the demo ids ``u000000`` to ``u{n-1:06d}``.
    """
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise ValueError("--entities: the count must be at least 1")
        return [f"u{i:06d}" for i in range(count)]
    match = _RANGE.match(spec)
    if match is None:
        raise ValueError(f"--entities {spec!r}: expected a count or FIRST..LAST, e.g. u0..u99")
    first, last = int(match["first"]), int(match["last"])
    if last < first:
        raise ValueError(f"--entities {spec!r}: the range is empty")
    width = len(match["first"])
    return [f"{match['prefix']}{i:0{width}d}" for i in range(first, last + 1)]


def request_bodies(ids: Sequence[str], batch: int, count: int = 1000, seed: int = 7) -> list[bytes]:
    """``count`` JSON bodies: ``/score`` ones, or ``/score_batch`` ones of ``batch`` entities."""
    rng = random.Random(seed)

    def one() -> dict[str, object]:
        return {"entity_id": rng.choice(ids), "amount": round(rng.uniform(1.0, 2000.0), 2)}

    if batch == 0:
        return [json.dumps(one()).encode() for _ in range(count)]
    return [json.dumps({"requests": [one() for _ in range(batch)]}).encode() for _ in range(count)]


@dataclass(frozen=True)
class StageStats:
    """Latency percentiles of one stage (or of the client's view) over the run."""

    name: str
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Check:
    """One budget comparison."""

    what: str
    p99_ms: float
    budget_ms: float

    @property
    def holds(self) -> bool:
        """Whether p99 is within budget (a missing measurement never holds)."""
        return not math.isnan(self.p99_ms) and self.p99_ms <= self.budget_ms


@dataclass(frozen=True)
class Verdict:
    """Everything the run measured, and whether the deployment met the budget."""

    requests: int
    failed: int
    """Requests without a 2xx answer (status 0 counts: no answer at all)."""
    statuses: dict[int, int]
    rps: float
    stages: list[StageStats]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        """Every check holds, at least one request answered, and every answer was 2xx."""
        return self.requests > 0 and self.failed == 0 and all(c.holds for c in self.checks)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


def _stats(name: str, values_ms: list[float]) -> StageStats:
    ordered = sorted(values_ms)
    return StageStats(
        name,
        len(ordered),
        _percentile(ordered, 50.0),
        _percentile(ordered, 99.0),
        ordered[-1] if ordered else math.nan,
    )


def stage_samples(samples: Sequence[Sample]) -> dict[str, list[float]]:
    """Milliseconds per stage of the 2xx answers, the client's end-to-end latency first."""
    answered = [s for s in samples if 200 <= s.status < 300]
    stages: dict[str, list[float]] = {CLIENT: [s.latency_s * 1000.0 for s in answered]}
    for sample in answered:
        for name, ms in sample.stages_ms.items():
            stages.setdefault(name, []).append(ms)
    return stages


def evaluate(samples: Sequence[Sample], budget: LatencyBudget, duration_s: float) -> Verdict:
    """Compare the run's p99s with ``budget``."""
    statuses: dict[int, int] = {}
    for sample in samples:
        statuses[sample.status] = statuses.get(sample.status, 0) + 1
    stages = [_stats(name, values) for name, values in stage_samples(samples).items()]
    by_name = {stage.name: stage for stage in stages}
    features = by_name.get(FEATURES)
    checks = [
        Check("total (client) p99", by_name[CLIENT].p99_ms, budget.total_ms),
        Check(
            "features p99", math.nan if features is None else features.p99_ms, budget.features_ms
        ),
    ]
    failed = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    return Verdict(len(samples), failed, statuses, len(samples) / duration_s, stages, checks)


def render(console: Console, verdict: Verdict, budget: LatencyBudget) -> None:
    """Print the per-stage table and the verdict."""
    table = Table(title="Latency by stage (ms; client = end to end, others from Server-Timing)")
    for column in ("stage", "count", "p50", "p99", "max", "budget (p99)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    budgets = {CLIENT: budget.total_ms, FEATURES: budget.features_ms}
    for stage in verdict.stages:
        limit = budgets.get(stage.name)
        table.add_row(
            stage.name,
            str(stage.count),
            f"{stage.p50_ms:.3f}",
            f"{stage.p99_ms:.3f}",
            f"{stage.max_ms:.3f}",
            "" if limit is None else f"{limit:g}",
        )
    console.print(table)
    statuses = ", ".join(
        f"{code or 'no answer'}: {n}" for code, n in sorted(verdict.statuses.items())
    )
    console.print(f"{verdict.requests} requests, {verdict.rps:.0f}/s; status {statuses or 'none'}")
    for check in verdict.checks:
        mark = "[green]ok[/]" if check.holds else "[red]BREACH[/]"
        measured = "not reported" if math.isnan(check.p99_ms) else f"{check.p99_ms:.3f} ms"
        console.print(f"{mark}  {check.what}: {measured} (budget {check.budget_ms:g} ms)")
    if verdict.failed:
        console.print(f"[red]FAIL[/]  {verdict.failed} requests got no 2xx answer")
    console.print("[green]SLA met[/]" if verdict.passed else "[red]SLA not met[/]")


def plot(samples: Sequence[Sample], budget: LatencyBudget, path: Path, title: str) -> None:
    """Save the latency distribution of each stage (CDF, log scale) with the budgets marked.

    Raises ``ImportError`` when matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, values in stage_samples(samples).items():
        ordered = sorted(v for v in values if v > 0)
        if ordered:
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.step(
                ordered, fractions, where="post", label=name, linewidth=2 if name == CLIENT else 1
            )
    axes.axvline(
        budget.total_ms, color="red", linestyle="--", label=f"total budget {budget.total_ms:g} ms"
    )
    axes.axvline(
        budget.features_ms,
        color="orange",
        linestyle=":",
        label=f"features budget {budget.features_ms:g} ms",
    )
    axes.axhline(0.99, color="grey", linewidth=0.5)
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds (log scale)")
    axes.set_ylabel("fraction of requests")
    axes.set_title(title)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def budget_of(args: argparse.Namespace) -> LatencyBudget:
    """The profile's budget, with ``--total-ms`` / ``--features-ms`` overriding it."""
    profile = PROFILES[args.profile]
    return LatencyBudget(
        total_ms=profile.total_ms if args.total_ms is None else args.total_ms,
        features_ms=profile.features_ms if args.features_ms is None else args.features_ms,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``featserve sla`` with parsed arguments; return the exit code."""
    console = Console()
    try:
        # A read token when the deployment has one (FEATSERVE_READ_TOKEN, else the write token).
        token = os.environ.get("FEATSERVE_READ_TOKEN") or os.environ.get("FEATSERVE_WRITE_TOKEN")
        endpoint = Endpoint.parse(args.url, token or None)
        ids = entity_ids(args.entities)
        plan = LoadPlan(
            duration_s=args.duration,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout_s=args.timeout,
            max_requests=args.max_requests,
            warmup_s=args.warmup,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    budget = budget_of(args)
    pace = f"{args.rate:g} requests/s" if args.rate else "closed loop"
    console.print(
        f"Driving {redact(args.url)} for {args.duration:g} s: "
        f"{args.concurrency} connections, {pace}; "
        f"budget p99 total {budget.total_ms:g} ms, features {budget.features_ms:g} ms"
    )
    bodies = request_bodies(ids, args.batch)
    samples = asyncio.run(drive(endpoint, bodies, plan))
    verdict = evaluate(samples, budget, args.duration)
    render(console, verdict, budget)
    if args.plot is not None:
        try:
            plot(samples, budget, args.plot, f"featserve sla {redact(args.url)}")
            console.print(f"Plot saved to {args.plot}")
        except ImportError:
            console.print(
                "[yellow]--plot needs matplotlib:[/] pip install 'featserve[bench]' "
                "(or pip install matplotlib)"
            )
    return 0 if verdict.passed else EXIT_BREACH


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve sla`` to the command line."""
    parser = commands.add_parser(
        "sla",
        help="load a deployment and check its p99 against a latency budget",
        description="Drive a bounded load at URL (only there), read each response's "
        "Server-Timing, print per-stage p50/p99 and compare total and features p99 with the "
        "budget. Exit 0 when met, 1 on a breach or any non-2xx answer, 2 on bad arguments.",
    )
    parser.add_argument("--url", required=True, help="the endpoint, e.g. http://HOST:3000/score")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fraud")
    parser.add_argument("--total-ms", type=_positive, help="p99 budget of the whole request")
    parser.add_argument("--features-ms", type=_positive, help="p99 budget of feature retrieval")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive, help="requests per second (paced, open loop)")
    pace.add_argument(
        "--concurrency", type=int, help="connections in a closed loop (default 1; 16 with --rate)"
    )
    parser.add_argument(
        "--duration", type=_positive, default=10.0, help=f"seconds (at most {MAX_DURATION_S:g})"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    parser.add_argument("--entities", default="10000", help="a count, or FIRST..LAST ids")
    parser.add_argument("--batch", type=int, default=0, help="entities per /score_batch body")
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds per request")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--plot", type=Path, help="save the latency distribution as a PNG")
    parser.set_defaults(run=_run_with_defaults)


def _run_with_defaults(args: argparse.Namespace) -> int:
    if args.concurrency is None:
        args.concurrency = 16 if args.rate else 1
    return run(args)
