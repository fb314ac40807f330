"""Where a request's CPU goes: py-spy over a featserve worker under load, one row per stage.

Usage: ``python -m bench.request_profile [--path /features] [--connections 16] [--seconds 20]
[--checkout DIR]`` (``DIR``: serve featserve from another checkout, e.g. before a change)

Starts Redis with the example's demo data for 10,000 users and featserve at its shipped
defaults, pinned as in every benchmark (``bench.machine``: the worker on one CPU, Redis, the
load and py-spy on the other), then drives ``--path`` with the bodies of ``make
bench-peers`` (one user at random; ``/features`` asks for the ``features`` group only) while
``py-spy record --nonblocking`` samples the worker.  Each sample goes to the stage of the
innermost frame that ``STAGES`` recognises (a frame of the resolver under the tracing layer
is the resolver's); the µs column is that share of the worker's CPU per request, measured
over the same seconds.  py-spy reads the worker's memory from outside and does not stop it
(``--nonblocking``), so the figures are those of the unprofiled worker, give or take noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import psutil

from bench.feast_peer import request_bodies
from bench.http_bench import own_home
from bench.machine import CpuSnapshot, pin_cpus
from bench.report import markdown_table
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE
from service.harness.load import Endpoint, LoadPlan, drive
from service.harness.local_redis import LocalRedis
from service.harness.served import (
    EXAMPLE_PROJECT,
    ROOT,
    start_service,
    stop,
    train_small_model,
)

__all__ = ["STAGES", "stage_shares"]

USERS = 10_000

STAGES = (
    (
        "tracing: OpenTelemetry's ASGI layer and spans, featserve's stage spans",
        r"opentelemetry|service/tracing\.py|\(asgi/__init__|\(trace/|_semconv|\(attributes/|"
        r"sampling\.py|\(util/__init__|propagation/",
    ),
    (
        "metrics: BentoML's traffic layer, featserve's observe_request",
        r"prometheus_client|instruments\.py|service/metrics\.py|\((metrics|values|mmap_dict)\.py",
    ),
    ("inspect: signatures, binding (BentoML API method, simple_di)", r"\(inspect\.py"),
    (
        "request body: BentoML's parse, pydantic validation",
        r"from_http_request|parse_request|model_validate|serde\.py",
    ),
    (
        "response: pydantic dump, JSON encoding",
        r"to_http_response|IterableResponse|model_dump|\(json/|_root_json|_whole_response",
    ),
    ("Redis client (redis-py)", r"\(redis/"),
    ("featserve resolver, cache, store (features/)", r"\(features/"),
    ("featserve endpoint (service.py, scoring, model)", r"service/(service|scoring)\.py|\(models/"),
    ("featserve middlewares and adapter", r"service/middleware/|service/bentoml_adapter\.py"),
    ("BentoML app glue", r"_bentoml_impl|_bentoml_sdk|bentoml/_internal|simple_di"),
    ("starlette routing and middleware", r"\(starlette/"),
    ("uvicorn HTTP protocol (httptools)", r"\(uvicorn/|httptools"),
    ("asyncio event loop", r"\(asyncio/|<frozen|selectors"),
)  # fmt: skip
"""(stage, pattern of a frame's file or function), innermost first wins; the rest: ``other``."""

_PATTERNS = [(stage, re.compile(pattern)) for stage, pattern in STAGES]


def stage_shares(raw: str) -> Counter[str]:
    """Samples by stage from py-spy's ``--format raw`` output (``frame;frame;... count``)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        stage = "other"
        for frame in reversed(stack.split(";")):
            found = next((name for name, pattern in _PATTERNS if pattern.search(frame)), None)
            if found is not None:
                stage = found
                break
        counts[stage] += int(count)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Serve, load, sample, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", choices=("/features", "/score"), default="/features")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the featserve to serve")
    args = parser.parse_args(argv)
    cpus = pin_cpus()
    work = "features" if args.path == "/features" else "score"
    bodies = request_bodies(EXAMPLE.registry.group(EXAMPLE.entity.name, "features"))
    with tempfile.TemporaryDirectory(prefix="featserve-profile-") as folder, LocalRedis() as redis:
        tmp = Path(folder)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            load_demo_data(redis.url, USERS, tmp / "tables", project=EXAMPLE_PROJECT)
        train_small_model(tmp / "bentoml")
        server_cpu = None if cpus.server is None else str(cpus.server)
        home = own_home(tmp / "bentoml", tmp / "home")
        process, url, _ = start_service(home, redis, tmp, cwd=args.checkout, cpus=server_cpu)
        try:
            [worker] = psutil.Process(process.pid).children(recursive=True)
            endpoint = Endpoint.parse(url + args.path)
            warm = LoadPlan(duration_s=2.0, concurrency=args.connections)
            asyncio.run(drive(endpoint, bodies["featserve", work], warm))
            output = tmp / "profile.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                    str(worker.pid), "--rate", "400", "--nonblocking", "--format", "raw",
                    "--duration", str(round(args.seconds)), "--output", str(output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            before = CpuSnapshot.take(process.pid)
            plan = LoadPlan(duration_s=args.seconds, concurrency=args.connections)
            samples = asyncio.run(drive(endpoint, bodies["featserve", work], plan))
            cpu = CpuSnapshot.take(process.pid).shares_since(before)["server"]
            spy.wait()
            counts = stage_shares(output.read_text())
        finally:
            stop(process)
    answered = sum(1 for s in samples if s.status == 200)
    per_request_us = cpu / 100 * args.seconds / max(1, answered) * 1e6
    total = sum(counts.values())
    rows = [
        [stage, f"{n / total:.1%}", f"{per_request_us * n / total:,.0f}"]
        for stage, n in counts.most_common()
    ]
    rows.append(["worker CPU per request", "100 %", f"{per_request_us:,.0f}"])
    print(
        f"featserve {args.path}, {args.connections} connections, {args.seconds:g} s: "
        f"{answered / args.seconds:,.0f} answers/s, worker at {cpu:.0f} % of a CPU, "
        f"{total:,} samples. Core split: {cpus.describe()}.\n"
    )
    print(markdown_table(["stage", "share of samples", "µs per request"], rows, left=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
