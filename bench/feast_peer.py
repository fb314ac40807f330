"""Feast as a peer: Feast 0.67's Python feature server against featserve and the BentoML echo.

Usage: ``make bench-peers`` (``python -m bench.feast_peer [--quick] [--rounds N]``; Feast must
be in ``var/feast-venv``, which the make target creates from ``requirements/feast.txt``)

One Redis holds the example project's demo data for ``USERS`` users, loaded twice from the
same tables: by ``featserve materialize`` in featserve's key layout, and by ``feast
materialize`` (Feast's own write path) in Feast's, from a Feast repo generated here whose one
feature view has the ten features of featserve's ``user:features`` group.  Three servers run
at once, each on the server CPU (``bench.machine``): ``feast serve`` with one worker (no
access log, no worker restarts), featserve at its shipped defaults, and the echo floor
(``bench/echo_service.py``).  The same load client (``bench.load_run``) drives, each body
naming one of the ``USERS`` users at random, so about 70 % of featserve's feature groups come
from Redis and the rest from its 5 s cache (Feast has no cache: all from Redis):

- ``features``: Feast's ``/get-online-features`` of the ten features, featserve's
  ``/features`` of the ``features`` group only (the same work), the echo of the same body;
- ``score``: featserve's ``/score`` (all three groups, derive and the model);
- 16 and 1 connections for each, and featserve at 64 connections with a client that
  sends again at once after a refusal and with one that honours ``Retry-After``.

Each case runs in ``--rounds`` interleaved rounds (every server in turn), pooled.  The
tables print featserve/Feast ratios of real answers per second and p99, the 64/16
connection goodput ratio, and the source mix of every featserve figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import itertools
import json
import os
import random
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from bench.http_bench import feature_sources, own_home
from bench.load_run import LoadRun, WindowStats
from bench.machine import CpuSnapshot, pin_cpus
from bench.report import Section, markdown_table, ratio
from features.project import FeatureGroup
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE
from service.harness.load import Endpoint, LoadPlan, Response, Sample, drive
from service.harness.local_redis import LocalRedis, free_port
from service.harness.served import (
    EXAMPLE_PROJECT,
    ROOT,
    running_service,
    start_service,
    stop,
    train_small_model,
    wait_until_ready,
)

__all__ = ["FEAST_VENV", "Case", "feast_repo", "main", "measure", "require_feast", "section"]

FEAST_OPTIONS = {
    "feast": (),
    "feast-tuned": ("--no-access-log", "--max-requests", "0"),
}
"""``feast serve``'s options beyond host, port and one worker: as shipped (access log on,
the worker restarted after about 1,000 requests), and tuned as featserve ships (no access
log, no restarts)."""

FEAST_VENV = ROOT / "var" / "feast-venv"
"""Feast's virtualenv (``make bench-peers`` creates it from ``requirements/feast.txt``)."""

USERS = 10_000
GROUP = "features"
"""The featserve group whose ten features Feast serves too."""
VIEW = "user_features"
"""Feast's feature view of those features."""
ROUND_S = 4.0
ROUNDS = 5
CHECKED_USERS = 200
"""Users whose ten values are compared between Feast and featserve before the load."""


@dataclass(frozen=True)
class Case:
    """One measured configuration: which server and path, how many connections, which client."""

    server: str
    """``feast``, ``feast-tuned``, ``echo`` or ``featserve``."""
    work: str
    """``features`` (the ten features) or ``score``."""
    connections: int
    honour_retry_after: bool = False

    @property
    def label(self) -> str:
        """E.g. ``featserve /score, 64 conn., honours Retry-After``."""
        client = ""
        if self.connections > 16:
            client = ", honours Retry-After" if self.honour_retry_after else ", retries at once"
        return f"{self.server} {self.path}{client}"

    @property
    def path(self) -> str:
        """The path the case's requests go to."""
        if self.server.startswith("feast"):
            return "/get-online-features"
        if self.server == "echo":
            return "/echo"
        return "/features" if self.work == "features" else "/score"

    @property
    def bodies(self) -> tuple[str, str]:
        """Which request bodies the case sends: ``request_bodies``' key."""
        if self.server.startswith("feast"):
            return "feast", self.work
        return (
            ("featserve", self.work)
            if self.server.startswith("featserve")
            else ("echo", "features")
        )


CASES = (
    *(
        Case(server, "features", connections)
        for connections in (16, 1)
        for server in ("feast", "feast-tuned", "echo", "featserve")
    ),
    Case("featserve", "score", 16),
    Case("featserve", "score", 1),
    *(
        Case("featserve", work, 64, honour)
        for work in ("features", "score")
        for honour in (False, True)
    ),
)

BASELINE_CASES = (
    Case("featserve@base", "features", 16),
    Case("featserve@base", "score", 16),
    Case("featserve@base", "features", 64),
    Case("featserve@base", "features", 64, True),
)
"""With ``--baseline DIR``: featserve from another checkout (before a change), same run."""


@dataclass
class Result:
    """One case's pooled rounds."""

    case: Case
    stats: WindowStats
    server_cpu: float
    sources: Counter[str]
    not_present: int
    """Feast answers with some feature not ``PRESENT`` (not real)."""
    round_p99_ms: list[float]
    """Each round's own p99, in the order the rounds ran."""


_FEAST_TYPES = {"int": "Int64", "float": "Float64"}


def feast_repo(folder: Path, group: FeatureGroup, table: Path, redis_url: str) -> None:
    """A Feast repo in ``folder`` whose feature view ``VIEW`` has ``group``'s features,
    read from ``table`` (featserve's demo table, its timestamps converted), on ``redis_url``."""
    folder.mkdir(parents=True)
    data = pq.read_table(table)
    seconds = data.column("event_timestamp").cast(pa.int64())
    stamps = pa.compute.cast(seconds, pa.timestamp("s", tz="UTC"))
    data = data.set_column(
        data.schema.get_field_index("event_timestamp"), "event_timestamp", stamps
    )
    pq.write_table(data, folder / "features.parquet")
    host_port = redis_url.removeprefix("redis://").split("/", 1)[0]
    (folder / "feature_store.yaml").write_text(
        "project: featserve_peer\n"
        "registry: registry.db\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{host_port}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    fields = ",\n        ".join(
        f'Field(name="{f.name}", dtype={_FEAST_TYPES[f.type_name]})' for f in group.features
    )
    (folder / "repo.py").write_text(
        f'''"""Generated by bench/feast_peer.py: featserve's {group.name} group as a view."""
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["entity_id"], value_type=ValueType.STRING)
source = FileSource(path="{folder / "features.parquet"}", timestamp_field="event_timestamp")
{VIEW} = FeatureView(
    name="{VIEW}",
    entities=[user],
    ttl=timedelta(seconds={int(group.freshness.total_seconds())}),
    schema=[
        {fields},
    ],
    source=source,
    online=True,
)
'''
    )


def _feast(folder: Path, *args: str, cpus: str | None = None) -> list[str]:
    pinned = ["taskset", "-c", cpus] if cpus else []
    return [*pinned, str(FEAST_VENV / "bin" / "feast"), "--chdir", str(folder), *args]


def materialize_feast(folder: Path) -> None:
    """``feast apply`` then ``feast materialize`` over the table's day."""
    subprocess.run(_feast(folder, "apply"), check=True, capture_output=True)
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=1)).isoformat(), (now + dt.timedelta(hours=1)).isoformat()
    subprocess.run(
        _feast(folder, "materialize", start, end, "--views", VIEW), check=True, capture_output=True
    )


@contextmanager
def feast_server(
    folder: Path, options: Sequence[str], cpus: str | None, log: Path
) -> Iterator[tuple[int, str]]:
    """``feast serve`` with one worker and ``options`` on a free port: yields
    ``(pid, base URL)``."""
    port = free_port()
    output = log.open("wb")
    command = _feast(
        folder, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        *options, cpus=cpus,
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 120.0, path="/health", name="feast serve")
        yield process.pid, url
    finally:
        stop(process)
        output.close()


def _ids() -> list[str]:
    assert EXAMPLE.demo is not None
    return [EXAMPLE.demo.entity_id(i) for i in range(USERS)]


def _feast_body(group: FeatureGroup, entity_id: str) -> bytes:
    features = [f"{VIEW}:{f.name}" for f in group.features]
    return json.dumps({"features": features, "entities": {"entity_id": [entity_id]}}).encode()


def request_bodies(group: FeatureGroup) -> dict[tuple[str, str], list[bytes]]:
    """One body per user for each (server, work)."""
    ids = _ids()
    features = [json.dumps({"entity_ids": [i], "groups": [GROUP]}).encode() for i in ids]
    score = [
        json.dumps(json.loads(body) | {"entity_id": i}).encode()
        for i, body in zip(ids, _score_template(len(ids)), strict=True)
    ]
    return {
        ("feast", "features"): [_feast_body(group, i) for i in ids],
        ("echo", "features"): [b'{"payload": ' + body + b"}" for body in features],
        ("featserve", "features"): features,
        ("featserve", "score"): score,
    }


def _score_template(count: int) -> list[bytes]:
    from service.cli import sla

    return sla.request_bodies(EXAMPLE, ["x"], 0, count, seed=5)


def check_same_values(feast_url: str, featserve_url: str, group: FeatureGroup) -> None:
    """Feast and featserve answer the same ten values for ``CHECKED_USERS`` users (raise if
    not): both copies hold the same data, and Feast's answers are real."""
    names = [f.name for f in group.features]
    for entity_id in random.Random(3).sample(_ids(), CHECKED_USERS):
        theirs = httpx.post(
            f"{feast_url}/get-online-features",
            content=_feast_body(group, entity_id),
            headers={"Content-Type": "application/json"},
        ).json()
        if "metadata" not in theirs:
            raise RuntimeError(f"Feast answered {theirs}")
        values = {
            name.split(":")[-1]: result["values"][0]
            for name, result in zip(
                theirs["metadata"]["feature_names"], theirs["results"], strict=True
            )
        }
        ours = httpx.post(
            f"{featserve_url}/features", json={"entity_ids": [entity_id], "groups": [GROUP]}
        ).json()["entities"][0]["groups"][GROUP]["values"]
        if any(values[n] != ours[n] for n in names):
            raise RuntimeError(f"{entity_id}: Feast answers {values}, featserve {ours}")


def _not_present(count: list[int]) -> object:
    def observe(sample: Sample, response: Response | None) -> None:
        if response is None or response.status != 200:
            return
        results = json.loads(response.body)["results"]
        if any(status != "PRESENT" for r in results[1:] for status in r["statuses"]):
            count[0] += 1

    return observe


def run_case(
    case: Case, pid: int, base_url: str, payloads: Sequence[bytes], duration_s: float
) -> tuple[LoadRun, float, Counter[str], int]:
    """One round of ``case``: samples, server CPU %, featserve's sources, Feast's non-real."""
    plan = LoadPlan(
        duration_s=duration_s,
        concurrency=case.connections,
        warmup_s=1.0,
        honour_retry_after=case.honour_retry_after,
    )
    featserve = case.server.startswith("featserve")
    before_sources = feature_sources(base_url) if featserve else Counter[str]()
    before = CpuSnapshot.take(pid)
    missing = [0]
    observe = _not_present(missing) if case.server.startswith("feast") else None
    samples = asyncio.run(
        drive(Endpoint.parse(base_url + case.path), payloads, plan, observe=observe)  # type: ignore[arg-type]
    )
    cpu = CpuSnapshot.take(pid).shares_since(before)["server"]
    sources = Counter[str]()
    if featserve:
        sources = feature_sources(base_url)
        sources.subtract(before_sources)
    return LoadRun(duration_s, samples), cpu, sources, missing[0]


def measure(
    tmp: Path,
    redis: LocalRedis,
    split: tuple[int, int] | None,
    rounds: int,
    round_s: float,
    baseline: Path | None = None,
) -> list[Result]:
    """Load the data twice, serve every server, run every case in interleaved rounds;
    ``baseline``: a checkout of featserve served too (``featserve@base``)."""
    cases = CASES + (BASELINE_CASES if baseline else ())
    group = EXAMPLE.registry.group(EXAMPLE.entity.name, GROUP)
    tables = tmp / "tables"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        load_demo_data(redis.url, USERS, tables, project=EXAMPLE_PROJECT)
    repo = tmp / "feast-repo"
    feast_repo(repo, group, tables / "user_features.parquet", redis.url)
    materialize_feast(repo)
    home = tmp / "bentoml"
    train_small_model(home)
    cpus = None if split is None else str(split[0])
    payloads = request_bodies(group)
    parts: dict[Case, list[tuple[LoadRun, float, Counter[str], int]]] = {}
    with ExitStack() as stack:
        servers: dict[str, tuple[int, str]] = {}
        for name, options in FEAST_OPTIONS.items():
            log = tmp / f"{name}.log"
            servers[name] = stack.enter_context(feast_server(repo, options, cpus, log))
        for name, target, env in (
            (
                "echo",
                "bench.echo_service:Echo",
                {"BENCH_PATCH_TIMEOUT": "1", "BENCH_GC_FREEZE": "1"},
            ),
            ("featserve", "service.service:ScoringService", {}),
        ):
            process, url = stack.enter_context(
                running_service(own_home(home, tmp / name), redis, tmp, target, cpus=cpus, **env)
            )
            servers[name] = (process.pid, url)
        if baseline is not None:
            base_home = own_home(home, tmp / "featserve@base")
            process, url, _ = start_service(base_home, redis, tmp, cwd=baseline, cpus=cpus)
            stack.callback(stop, process)
            servers["featserve@base"] = (process.pid, url)
        check_same_values(servers["feast"][1], servers["featserve"][1], group)
        for round_index in range(rounds):
            # Each round starts with another case, so none is always first after a switch.
            first = round_index % len(cases)
            for case in cases[first:] + cases[:first]:
                pid, url = servers[case.server]
                part = run_case(case, pid, url, payloads[case.bodies], round_s)
                parts.setdefault(case, []).append(part)
    return [_pooled(case, parts[case]) for case in cases]


def _pooled(case: Case, parts: Sequence[tuple[LoadRun, float, Counter[str], int]]) -> Result:
    whole = LoadRun.joined([part[0] for part in parts])
    sources = Counter[str]()
    for part in parts:
        sources.update(part[2])
    return Result(
        case,
        whole.window(0.0, whole.duration_s),
        mean(part[1] for part in parts),
        sources,
        sum(part[3] for part in parts),
        [part[0].window(0.0, part[0].duration_s).p99_ms for part in parts],
    )


def _mix(sources: Counter[str]) -> str:
    total = sum(sources.values())
    if not total:
        return "-"
    return ", ".join(f"{s} {n / total:.0%}" for s, n in sources.most_common() if n > 0)


def _find(results: Sequence[Result], case: Case) -> Result:
    return next(r for r in results if r.case == case)


def refusal_cost(base: Result, over: Result) -> tuple[float | None, float | None]:
    """What one refusal cost the worker in CPU µs, and the share of the worker's CPU the
    refusals took together: the CPU of ``over`` beyond its answers, each answer costing what
    one cost in ``base`` (16 connections, no refusals)."""
    refusals = over.stats.refused_share * over.stats.rps
    if refusals < 1 or base.stats.rps <= 0:
        return None, None
    per_answer = base.server_cpu / 100 / base.stats.rps
    spent = over.server_cpu / 100 - per_answer * (over.stats.rps - refusals)
    return max(0.0, spent) / refusals * 1e6, max(0.0, spent) / (over.server_cpu / 100)


ONE_CONNECTION_MARGIN_MS = 0.3
"""Issue 27 item 5: featserve's 1-connection p99 at most this much above the echo's."""


def one_connection(results: Sequence[Result]) -> str:
    """featserve's 1-connection p99 against the echo's, round by round (the rounds are
    interleaved, so each pair ran minutes apart at most), and the median of the differences."""
    echo = _find(results, Case("echo", "features", 1))
    rows = []
    for work in ("features", "score"):
        ours = _find(results, Case("featserve", work, 1))
        differences = [a - b for a, b in zip(ours.round_p99_ms, echo.round_p99_ms, strict=True)]
        middle = median(differences)
        verdict = "met" if middle <= ONE_CONNECTION_MARGIN_MS else "missed"
        rows.append(
            [
                f"featserve {ours.case.path}",
                ", ".join(f"{v:.2f}" for v in ours.round_p99_ms),
                ", ".join(f"{v:.2f}" for v in echo.round_p99_ms),
                ", ".join(f"{v:+.2f}" for v in differences),
                f"{middle:+.2f}",
                f"{verdict} (at most +{ONE_CONNECTION_MARGIN_MS:g})",
                _mix(ours.sources),
            ]
        )
    header = [
        "1 connection", "p99 ms per round", "echo p99 ms per round", "difference per round",
        "median difference ms", "item 5", "source mix",
    ]  # fmt: skip
    return markdown_table(header, rows, left=1)


def tables(results: Sequence[Result]) -> list[str]:
    """The Markdown tables: every case, the overload goodput, the 1-connection floor."""
    rows = []
    for r in results:
        s = r.stats
        connections = min(r.case.connections, 16)
        feast = _find(results, Case("feast-tuned", "features", connections))
        shipped = _find(results, Case("feast", "features", connections))
        real = s.real_rps - (r.not_present / (s.end_s - s.start_s))
        rows.append(
            [
                r.case.label, str(r.case.connections), str(s.requests), f"{s.rps:,.0f}",
                f"{real:,.0f}", f"{s.refused_share:.0%}", f"{s.p50_ms:.2f}", f"{s.p90_ms:.2f}",
                f"{s.p99_ms:.2f}", f"{s.max_ms:.1f}", str(s.errors), f"{r.server_cpu:.0f}",
                _mix(r.sources) if r.case.server.startswith("featserve") else "-",
                ratio(real, feast.stats.real_rps), f"{s.p99_ms / feast.stats.p99_ms:.2f}x",
                ratio(real, shipped.stats.real_rps), f"{s.p99_ms / shipped.stats.p99_ms:.2f}x",
            ]
        )  # fmt: skip
    cases = markdown_table(
        [
            "case", "conn.", "requests", "req/s", "real/s", "refused", "p50 ms", "p90 ms",
            "p99 ms", "max ms", "errors", "server CPU %", "featserve groups by source",
            "real/s / Feast tuned", "p99 / Feast tuned", "real/s / Feast", "p99 / Feast",
        ],
        rows,
        left=1,
    )  # fmt: skip
    goodput = []
    for server, work, honour in itertools.product(
        ("featserve", "featserve@base"), ("features", "score"), (False, True)
    ):
        base = next((r for r in results if r.case == Case(server, work, 16)), None)
        over = next((r for r in results if r.case == Case(server, work, 64, honour)), None)
        if base is not None and over is not None:
            cost_us, share = refusal_cost(base, over)
            goodput.append(
                [
                    over.case.label, f"{base.stats.real_rps:,.0f}", f"{over.stats.real_rps:,.0f}",
                    f"{over.stats.real_rps / base.stats.real_rps:.2f}x",
                    f"{over.stats.refused_share:.0%}",
                    f"{over.stats.refused_share * over.stats.rps:,.0f}",
                    "-" if cost_us is None else f"{cost_us:.0f}",
                    "-" if share is None else f"{share:.0%}",
                    _mix(over.sources),
                ]
            )  # fmt: skip
    overload = markdown_table(
        [
            "64 connections", "real/s at 16", "real/s at 64", "64 / 16", "refused",
            "refusals/s", "CPU µs per refusal", "worker share in refusals", "source mix",
        ],
        goodput,
        left=1,
    )  # fmt: skip
    return [cases, overload, one_connection(results)]


def require_feast() -> None:
    """Stop with a hint when Feast's virtualenv is missing."""
    if not (FEAST_VENV / "bin" / "feast").exists():
        raise SystemExit(f"no Feast in {FEAST_VENV}: run make bench-peers (or make bench)")


def section(results: Sequence[Result], rounds: int, round_s: float, split: str) -> Section:
    """The report's section: every case, the overload goodput and the 1-connection floor."""
    return Section(
        "Feast as a peer (issue 27)",
        f"`python -m bench.feast_peer --rounds {rounds} --round-s {round_s:g}` (`make "
        f"bench-peers` alone): Feast 0.67's feature server as shipped and tuned, the BentoML "
        f"echo and featserve at shipped defaults, one worker each, on the same Redis and "
        f"{USERS:,} users picked at random; {rounds} interleaved rounds of {round_s:g} s per "
        f"case. Targets: `/features` at least 1.2x tuned Feast's real answers/s at 16 "
        f"connections and `/score` at least 1.0x, p99 at most 0.5x (item 2); at 64 "
        f"connections at least 0.9x the 16-connection real answers/s (item 3); 1-connection "
        f"p99 at most {ONE_CONNECTION_MARGIN_MS:g} ms above the echo's (item 5). {split}.",
        tables(results),
    )


def main(argv: list[str] | None = None) -> int:
    """Start Redis, load both copies, serve, load every case, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    parser.add_argument("--round-s", type=float, default=ROUND_S, help="seconds per round")
    parser.add_argument(
        "--baseline", type=Path, help="a featserve checkout to serve too, e.g. before a change"
    )
    args = parser.parse_args(argv)
    require_feast()
    cpus = pin_cpus()
    split = None if cpus.server is None or cpus.load is None else (cpus.server, cpus.load)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="featserve-peers-") as tmp, LocalRedis() as redis:
        results = measure(Path(tmp), redis, split, args.rounds, args.round_s, args.baseline)
    print(
        f"`make bench-peers`, {started:%Y-%m-%d %H:%M} UTC, {args.rounds} rounds of "
        f"{args.round_s:g} s per case; load average before {load_before[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f}. Core split: {cpus.describe()}.\n"
    )
    print("\n\n".join(tables(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
