"""``featserve sla``: drive a bounded load at a deployment and check it against a budget.

Usage::

    featserve sla --url http://127.0.0.1:3000/score --profile payments --rate 200 --duration 10
    featserve sla --url URL --total-ms 50 --features-ms 10 --concurrency 8 --plot sla.png --json

Requests go to the ``--url``s only (repeat it to mix endpoints), with bodies
that suit each endpoint, built from the project's declared request inputs
(``--project``, else ``FEATSERVE_PROJECT``): ``/score`` for random entities,
``/score_batch`` of ``--batch`` entities, ``/features`` of ``--batch`` ids.  Each response's
``Server-Timing`` header gives the server's stages, and its body where each
answer's features came from.  The verdict compares, at p99, the latency the
client saw with the total budget and the ``features`` stage with the feature
budget (the project's own budget, or ``--profile``'s from ``features.budgets``;
``--total-ms`` and ``--features-ms`` override), and counts truth apart from speed: more
than ``--max-degraded`` % of answers shaped by a fault (the service marked
them ``degraded``, or served them ``stale`` or ``unavailable``) is a breach
however fast they were, and so is more than ``--max-shed`` % of requests
refused on purpose (503 or 429 with ``Retry-After``).  Any other non-2xx
answer or failed request is a breach.  The exit code is 0 when everything
holds, 1 on any breach, 2 on bad arguments; ``--json`` prints the verdict
as one object.  When the environment holds ``FEATSERVE_READ_TOKEN`` (or
else ``FEATSERVE_WRITE_TOKEN``), every request carries it as a bearer token.
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
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from features.budgets import PROFILES, LatencyBudget
from features.errors import ProjectError
from features.project import Project, RequestInput
from features.redaction import redact
from features.timing import Stage
from service.cli.project_option import chosen_project
from service.harness.load import MAX_DURATION_S, Endpoint, LoadPlan, Sample, drive
from service.harness.stats import percentiles

__all__ = [
    "Check",
    "EndpointMix",
    "Limits",
    "Verdict",
    "as_json",
    "entity_ids",
    "evaluate",
    "register",
    "related_ids",
    "request_bodies",
    "run",
]

EXIT_BREACH = 1
EXIT_USAGE = 2

CLIENT = "client"
"""The row of the latency the load generator measured, end to end."""

DEFAULT_BATCH = 10
"""Entities per ``/score_batch`` body when ``--batch`` does not say."""

_RANGE = re.compile(r"^(?P<prefix>\D*)(?P<first>\d+)\.\.(?P=prefix)(?P<last>\d+)$")


def entity_ids(spec: str, project: Project) -> list[str]:
    """``"u000000..u009999"`` (same prefix, zero-padded as the first) or a count ``"500"``.

    A count ``n`` means the project's first ``n`` demo ids (for example ``u000000`` to
    ``u{n-1:06d}``).
    """
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise ValueError("--entities: the count must be at least 1")
        if project.demo is None:
            raise ValueError(
                f"--entities {spec}: project {project.name!r} has no demo ids; give FIRST..LAST"
            )
        return [project.demo.entity_id(i) for i in range(count)]
    match = _RANGE.match(spec)
    if match is None:
        raise ValueError(f"--entities {spec!r}: expected a count or FIRST..LAST, e.g. u0..u99")
    first, last = int(match["first"]), int(match["last"])
    if last < first:
        raise ValueError(f"--entities {spec!r}: the range is empty")
    width = len(match["first"])
    return [f"{match['prefix']}{i:0{width}d}" for i in range(first, last + 1)]


def request_bodies(
    project: Project,
    ids: Sequence[str],
    batch: int,
    count: int = 1000,
    seed: int = 7,
    related: Mapping[str, Sequence[str]] | None = None,
    candidates: int | None = None,
) -> list[bytes]:
    """``count`` JSON bodies of ``project``'s API: ``/score`` ones, or ``/score_batch`` ones
    of ``batch`` entities.  Each names an entity of ``ids`` and carries every required
    request input, drawn within its declared bounds (an upper bound not declared is eight
    times the example, else 1,000 above the lower); optional inputs are left to the service.
    Each request entity's field takes ids of ``related[field]`` (``related_ids``): one, or
    ``candidates`` distinct ones (default: as many as the field takes).
    """
    rng = random.Random(seed)
    draws = [_draw(item) for item in project.request if item.required]
    entity_field = project.entity_field
    named = [(item, (related or {})[item.field]) for item in project.request_entities]

    def one() -> dict[str, object]:
        body: dict[str, object] = {entity_field: rng.choice(ids)}
        for item, pool in named:
            if item.candidates:
                size = min(candidates or item.max_count, item.max_count, len(pool))
                body[item.field] = rng.sample(list(pool), size)
            else:
                body[item.field] = rng.choice(pool)
        for name, draw in draws:
            body[name] = draw(rng)
        return body

    if batch == 0:
        return [json.dumps(one()).encode() for _ in range(count)]
    return [json.dumps({"requests": [one() for _ in range(batch)]}).encode() for _ in range(count)]


def related_ids(spec: str, project: Project) -> dict[str, list[str]]:
    """The ids each request entity's field draws from: for a count ``n``, the first ``n``
    demo ids of its entity (``DemoData.entity_id``)."""
    if not project.request_entities:
        return {}
    if not spec.isdigit() or project.demo is None:
        raise ValueError(
            f"--entities {spec}: project {project.name!r} names other entities in a request; "
            "their ids come from its demo data, so give a count"
        )
    demo = project.demo
    return {
        item.field: [demo.entity_id(i, item.entity.name) for i in range(int(spec))]
        for item in project.request_entities
    }


@dataclass(frozen=True)
class Limits:
    """What the run must hold to: the latency budget and the shares of bad answers."""

    budget: LatencyBudget
    max_degraded_pct: float = 1.0
    """Most answers, in percent of all answers, that a fault may shape."""
    max_shed_pct: float = 0.0
    """Most requests, in percent, refused on purpose (503/429 with ``Retry-After``)."""


@dataclass(frozen=True)
class StageStats:
    """Latency percentiles of one stage (or of the client's view) over the run."""

    name: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Check:
    """One comparison of a measured figure with its limit."""

    what: str
    measured: float
    """NaN when the run measured nothing to compare."""
    limit: float
    unit: str
    """``ms`` or ``%``."""

    @property
    def holds(self) -> bool:
        """Whether the figure is within its limit (a missing measurement never holds)."""
        return not math.isnan(self.measured) and self.measured <= self.limit


@dataclass(frozen=True)
class EndpointMix:
    """How one endpoint answered: statuses, and where its answers' features came from."""

    url: str
    requests: int
    statuses: dict[int, int]
    answers: int
    """Scored requests (or ``/features`` entities) in the 2xx bodies."""
    degraded: int
    """Of ``answers``, those a fault shaped (``degraded`` in the body, or a ``stale`` or
    ``unavailable`` source)."""
    sources: dict[str, int]
    """Feature groups by source over every answer."""


@dataclass(frozen=True)
class Verdict:
    """Everything the run measured, and whether the deployment met the budget."""

    requests: int
    failed: int
    """Requests without a 2xx answer that were not shed (status 0 counts: no answer at all)."""
    shed: int
    """503 or 429 answers with ``Retry-After``: load the service refused on purpose."""
    statuses: dict[int, int]
    rps: float
    stages: list[StageStats]
    endpoints: list[EndpointMix]
    checks: list[Check]

    @property
    def answers(self) -> int:
        """Answers over every endpoint."""
        return sum(endpoint.answers for endpoint in self.endpoints)

    @property
    def degraded(self) -> int:
        """Degraded answers over every endpoint."""
        return sum(endpoint.degraded for endpoint in self.endpoints)

    @property
    def sources(self) -> dict[str, int]:
        """Feature groups by source over every endpoint."""
        total: Counter[str] = Counter()
        for endpoint in self.endpoints:
            total.update(endpoint.sources)
        return dict(sorted(total.items()))

    @property
    def passed(self) -> bool:
        """Every check holds, at least one request answered, and no request failed."""
        return self.requests > 0 and self.failed == 0 and all(c.holds for c in self.checks)


def _stats(name: str, values_ms: list[float]) -> StageStats:
    p50, p90, p99, top = percentiles(values_ms, (50.0, 90.0, 99.0, 100.0))
    return StageStats(name, len(values_ms), p50, p90, p99, top)


def is_shed(sample: Sample) -> bool:
    """A deliberate refusal: 503 or 429 with ``Retry-After``."""
    return sample.status in (429, 503) and sample.retry_after


def stage_samples(samples: Sequence[Sample]) -> dict[str, list[float]]:
    """Milliseconds per stage of the 2xx answers, the client's end-to-end latency first."""
    answered = [s for s in samples if 200 <= s.status < 300]
    stages: dict[str, list[float]] = {CLIENT: [s.latency_s * 1000.0 for s in answered]}
    for sample in answered:
        for name, ms in sample.stages_ms.items():
            stages.setdefault(name, []).append(ms)
    return stages


def endpoint_mix(url: str, samples: Sequence[Sample]) -> EndpointMix:
    """Statuses and sources of the answers one endpoint gave."""
    statuses = Counter(sample.status for sample in samples)
    sources: Counter[str] = Counter()
    answers = degraded = 0
    for sample in samples:
        if sample.mix is not None:
            answers += sample.mix.answers
            degraded += sample.mix.degraded
            sources.update(dict(sample.mix.sources))
    return EndpointMix(
        url, len(samples), dict(sorted(statuses.items())), answers, degraded, dict(sources)
    )


def _share_pct(part: int, whole: int) -> float:
    return math.nan if whole == 0 else 100.0 * part / whole


def evaluate(by_url: Mapping[str, Sequence[Sample]], limits: Limits, duration_s: float) -> Verdict:
    """Compare the run with ``limits``: p99 latencies, the degraded share, the shed share."""
    samples = [sample for url_samples in by_url.values() for sample in url_samples]
    statuses = Counter(sample.status for sample in samples)
    stages = [_stats(name, values) for name, values in stage_samples(samples).items()]
    by_name = {stage.name: stage for stage in stages}
    features = by_name.get(Stage.FEATURES)
    endpoints = [endpoint_mix(url, url_samples) for url, url_samples in by_url.items()]
    shed = sum(1 for sample in samples if is_shed(sample))
    answers = sum(endpoint.answers for endpoint in endpoints)
    degraded = sum(endpoint.degraded for endpoint in endpoints)
    checks = [
        Check("total (client) p99", by_name[CLIENT].p99_ms, limits.budget.total_ms, "ms"),
        Check(
            "features p99",
            math.nan if features is None else features.p99_ms,
            limits.budget.features_ms,
            "ms",
        ),
        Check("degraded answers", _share_pct(degraded, answers), limits.max_degraded_pct, "%"),
        Check("shed requests", _share_pct(shed, len(samples)), limits.max_shed_pct, "%"),
    ]
    failed = sum(1 for s in samples if not 200 <= s.status < 300 and not is_shed(s))
    return Verdict(
        len(samples),
        failed,
        shed,
        dict(sorted(statuses.items())),
        len(samples) / duration_s,
        stages,
        endpoints,
        checks,
    )


def as_json(verdict: Verdict, limits: Limits, profile: str) -> dict[str, Any]:
    """The verdict as one JSON object for CI systems to keep and compare (NaN as null)."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {
        "met": verdict.passed,
        "profile": profile,
        "budget_ms": {"total": limits.budget.total_ms, "features": limits.budget.features_ms},
        "max_degraded_pct": limits.max_degraded_pct,
        "max_shed_pct": limits.max_shed_pct,
        "requests": verdict.requests,
        "rps": number(verdict.rps),
        "statuses": {str(code): n for code, n in verdict.statuses.items()},
        "failed": verdict.failed,
        "shed": verdict.shed,
        "shed_pct": number(_share_pct(verdict.shed, verdict.requests)),
        "answers": verdict.answers,
        "degraded": verdict.degraded,
        "degraded_pct": number(_share_pct(verdict.degraded, verdict.answers)),
        "sources": verdict.sources,
        "endpoints": {
            endpoint.url: {
                "requests": endpoint.requests,
                "statuses": {str(code): n for code, n in endpoint.statuses.items()},
                "answers": endpoint.answers,
                "degraded": endpoint.degraded,
                "degraded_pct": number(_share_pct(endpoint.degraded, endpoint.answers)),
                "sources": dict(sorted(endpoint.sources.items())),
            }
            for endpoint in verdict.endpoints
        },
        "stages": {
            stage.name: {
                "count": stage.count,
                "p50_ms": number(stage.p50_ms),
                "p90_ms": number(stage.p90_ms),
                "p99_ms": number(stage.p99_ms),
                "max_ms": number(stage.max_ms),
            }
            for stage in verdict.stages
        },
        "checks": [
            {
                "what": check.what,
                "measured": number(check.measured),
                "limit": check.limit,
                "unit": check.unit,
                "holds": check.holds,
            }
            for check in verdict.checks
        ],
    }


def render(console: Console, verdict: Verdict, budget: LatencyBudget) -> None:
    """Print the per-stage table, the sources of the answers and the verdict."""
    table = Table(title="Latency by stage (ms; client = end to end, others from Server-Timing)")
    for column in ("stage", "count", "p50", "p90", "p99", "max", "budget (p99)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    budgets = {CLIENT: budget.total_ms, Stage.FEATURES: budget.features_ms}
    for stage in verdict.stages:
        limit = budgets.get(stage.name)
        table.add_row(
            stage.name,
            str(stage.count),
            f"{stage.p50_ms:.3f}",
            f"{stage.p90_ms:.3f}",
            f"{stage.p99_ms:.3f}",
            f"{stage.max_ms:.3f}",
            "" if limit is None else f"{limit:g}",
        )
    console.print(table)
    console.print(_sources_table(verdict))
    statuses = ", ".join(
        f"{code or 'no answer'}: {n}" for code, n in sorted(verdict.statuses.items())
    )
    console.print(f"{verdict.requests} requests, {verdict.rps:.0f}/s; status {statuses or 'none'}")
    for check in verdict.checks:
        mark = "[green]ok[/]" if check.holds else "[red]BREACH[/]"
        measured = (
            "not measured" if math.isnan(check.measured) else f"{check.measured:.3f} {check.unit}"
        )
        console.print(f"{mark}  {check.what}: {measured} (limit {check.limit:g} {check.unit})")
    if verdict.failed:
        console.print(f"[red]FAIL[/]  {verdict.failed} requests got no 2xx answer")
    console.print("[green]SLA met[/]" if verdict.passed else "[red]SLA not met[/]")


def _sources_table(verdict: Verdict) -> Table:
    names = sorted({name for endpoint in verdict.endpoints for name in endpoint.sources})
    table = Table(title="Answers and where their feature groups came from")
    for column in ("endpoint", "answers", "degraded", *names):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for endpoint in verdict.endpoints:
        share = _share_pct(endpoint.degraded, endpoint.answers)
        degraded = f"{endpoint.degraded} ({share:.1f} %)" if endpoint.answers else "0"
        table.add_row(
            endpoint.url,
            str(endpoint.answers),
            degraded,
            *(str(endpoint.sources.get(name, 0)) for name in names),
        )
    return table


def plot(verdict: Verdict, samples: Sequence[Sample], budget: LatencyBudget, path: Path) -> None:
    """Save the latency distribution of each stage (CDF, log scale) with the budgets marked,
    and beside it the feature groups by source.

    Raises ``ImportError`` when matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (axes, bars) = plt.subplots(
        1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 1]}
    )
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
    axes.set_title("latency by stage")
    axes.legend(fontsize="small", loc="lower right")
    sources = verdict.sources
    bars.barh(list(sources), list(sources.values()))
    bars.set_xlabel("feature groups")
    share = _share_pct(verdict.degraded, verdict.answers)
    bars.set_title(f"sources ({share:.1f} % of answers degraded)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def budget_of(args: argparse.Namespace, declared: LatencyBudget) -> LatencyBudget:
    """``--profile``'s budget, else ``declared`` (the project's), with ``--total-ms`` /
    ``--features-ms`` overriding it."""
    profile = declared if args.profile is None else PROFILES[args.profile]
    return LatencyBudget(
        total_ms=profile.total_ms if args.total_ms is None else args.total_ms,
        features_ms=profile.features_ms if args.features_ms is None else args.features_ms,
    )


def _draw(item: RequestInput) -> tuple[str, Callable[[random.Random], object]]:
    """How a body's value of ``item`` is drawn: uniformly within its bounds."""
    low = item.minimum if item.minimum is not None else 0.0
    if item.maximum is not None:
        high = item.maximum
    elif item.example:
        high = max(low + 1.0, 8 * float(item.example))
    else:
        high = low + 1000.0
    if item.type == "timestamp":
        return item.name, lambda rng: int(time.time())
    if item.type == "int":
        return item.name, lambda rng: rng.randint(math.ceil(low), math.floor(high))
    return item.name, lambda rng: round(rng.uniform(low, high), 2)


def bodies_for(
    project: Project,
    url: str,
    ids: Sequence[str],
    batch: int,
    related: Mapping[str, Sequence[str]] | None = None,
    candidates: int | None = None,
) -> list[bytes]:
    """Request bodies that suit the endpoint ``url`` names (by the end of its path)."""
    path = urlsplit(url).path.rstrip("/")
    if path.endswith("/score_batch"):
        return request_bodies(
            project, ids, batch or DEFAULT_BATCH, related=related, candidates=candidates
        )
    if path.endswith("/features"):
        rng = random.Random(7)
        size = batch or 1
        return [
            json.dumps({"entity_ids": rng.sample(list(ids), min(size, len(ids)))}).encode()
            for _ in range(1000)
        ]
    return request_bodies(project, ids, batch, related=related, candidates=candidates)


async def drive_all(
    project: Project,
    urls: Sequence[str],
    ids: Sequence[str],
    batch: int,
    plan: LoadPlan,
    token: str | None = None,
    related: Mapping[str, Sequence[str]] | None = None,
    candidates: int | None = None,
) -> dict[str, list[Sample]]:
    """Drive every URL at once, the plan's connections and rate shared out evenly; ``token``
    goes with every request as a bearer token."""
    share = len(urls)
    per_url = replace(
        plan,
        concurrency=max(1, math.ceil(plan.concurrency / share)),
        rate=None if plan.rate is None else plan.rate / share,
        max_requests=max(1, plan.max_requests // share),
    )
    runs = await asyncio.gather(
        *(
            drive(
                Endpoint.parse(url, token),
                bodies_for(project, url, ids, batch, related, candidates),
                per_url,
                seed=index,
            )
            for index, url in enumerate(urls)
        )
    )
    return dict(zip(urls, runs, strict=True))


def run(args: argparse.Namespace) -> int:
    """Run ``featserve sla`` with parsed arguments; return the exit code."""
    console = Console(stderr=args.json)
    try:
        for url in args.urls:
            Endpoint.parse(url)
        project = chosen_project(args)
        ids = entity_ids(args.entities, project)
        related = related_ids(args.entities, project)
        plan = LoadPlan(
            duration_s=args.duration,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout_s=args.timeout,
            max_requests=args.max_requests,
            warmup_s=args.warmup,
        )
    except (ValueError, ProjectError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    limits = Limits(budget_of(args, project.budget), args.max_degraded, args.max_shed)
    pace = f"{args.rate:g} requests/s" if args.rate else "closed loop"
    console.print(
        f"Driving {redact(', '.join(args.urls))} for {args.duration:g} s: {args.concurrency} "
        f"connections, {pace}; budget p99 total {limits.budget.total_ms:g} ms, features "
        f"{limits.budget.features_ms:g} ms; at most {args.max_degraded:g} % degraded answers, "
        f"{args.max_shed:g} % shed requests"
    )
    # A read token when the deployment has one (FEATSERVE_READ_TOKEN, else the write token).
    token = os.environ.get("FEATSERVE_READ_TOKEN") or os.environ.get("FEATSERVE_WRITE_TOKEN")
    by_url = asyncio.run(
        drive_all(
            project, args.urls, ids, args.batch, plan, token or None, related, args.candidates
        )
    )
    verdict = evaluate(by_url, limits, args.duration)
    render(console, verdict, limits.budget)
    if args.json:
        print(json.dumps(as_json(verdict, limits, args.profile or f"project {project.name}")))
    if args.plot is not None:
        samples = [sample for url_samples in by_url.values() for sample in url_samples]
        try:
            plot(verdict, samples, limits.budget, args.plot)
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


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage from 0 to 100, got {text}")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve sla`` to the command line."""
    parser = commands.add_parser(
        "sla",
        help="load a deployment and check its p99 and its real answers against a budget",
        description="Drive a bounded load at each URL (only there), read each response's "
        "Server-Timing and feature sources, print per-stage p50/p90/p99 and the answers by "
        "source, and compare total and features p99, the share of degraded answers and the "
        "share of shed requests with their limits. Exit 0 when met, 1 on a breach or any "
        "failed request, 2 on bad arguments.",
    )
    parser.add_argument(
        "--url",
        required=True,
        action="append",
        dest="urls",
        help="an endpoint, e.g. http://HOST:3000/score; repeat to mix endpoints "
        "(/score, /score_batch, /features)",
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), help="a use case's budget (default: the project's)"
    )
    parser.add_argument("--total-ms", type=_positive, help="p99 budget of the whole request")
    parser.add_argument("--features-ms", type=_positive, help="p99 budget of feature retrieval")
    parser.add_argument(
        "--max-degraded",
        type=_percent,
        default=1.0,
        help="most answers, in %%, that a fault may shape (stale, unavailable, degraded); "
        "default 1",
    )
    parser.add_argument(
        "--max-shed",
        type=_percent,
        default=0.0,
        help="most requests, in %%, refused with 503/429 and Retry-After; default 0",
    )
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
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help=f"entities per /score_batch body (default {DEFAULT_BATCH}) or /features body "
        "(default 1); with a /score URL, a positive value sends /score_batch bodies",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        help="candidate ids per request of a project that ranks candidates (default: as "
        "many as its field takes); drawn from the first --entities demo ids of their entity",
    )
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds per request")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--plot", type=Path, help="save the latency distribution as a PNG")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the verdict as one JSON object on stdout (the tables go to stderr)",
    )
    parser.set_defaults(run=_run_with_defaults)


def _run_with_defaults(args: argparse.Namespace) -> int:
    if args.concurrency is None:
        args.concurrency = 16 if args.rate else 1
    return run(args)
