"""Materialization throughput: one process, one local Redis, the 10-feature ``user:features`` table.

Usage::

    python -m bench.materialize_bench [--users 200000 1000000] [--baseline-source DIR]
        [--rounds N] [--tables DIR] [--cluster] [--engine local|spark]

For each table size it writes the demo ``user:features`` table (``featserve
demo-data``) into a fresh, empty Redis with ``featserve materialize --json``
run as a child process, and reports entities per second (of the whole
child, interpreter start included, and of the run itself, as the report's
``elapsed_s`` says), the child's peak RSS (``wait4``'s ``ru_maxrss``), the
peak of the child and all its descendants together (sampled; for Spark the
driver, the JVM and its Python workers), and
Redis' own CPU (``INFO cpu``, ``used_cpu_sys + used_cpu_user`` before and
after) per entity written.

``--baseline-source DIR`` runs the same measurement, in the same run, with
the code in ``DIR`` first on the child's path (e.g. ``git archive main | tar
-x -C DIR``): the figure before this branch's change.  ``--rounds N``
alternates baseline and this branch N times (the machine is noisy: the
ratio of the medians is the figure).  ``--tables DIR`` keeps the demo tables
there (``DIR/u<users>``) and reuses them in later runs: a 10,000,000-user
table takes minutes to write.  ``--cluster`` writes
into the 3-primary local Redis Cluster instead (Redis CPU summed over the
primaries).  ``--engine spark`` runs ``featserve materialize --engine spark``
(``local[2]``; peak RSS is then what ``wait4`` reports: the largest of the
command and the descendants it waited for, which need not include the JVM).

Nothing is pinned: the client, Redis and (for Spark) the JVM share the
machine's CPUs with whatever else runs; the report prints the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench.report import markdown_table
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT

__all__ = ["Measured", "demo_table", "main", "measure"]

GROUP = "user:features"


@dataclass(frozen=True)
class Measured:
    """One run of ``featserve materialize``."""

    label: str
    users: int
    seconds: float
    run_seconds: float
    """The run alone, as ``featserve materialize --json`` reports it (``elapsed_s``)."""
    entities: int
    peak_rss_mb: float
    peak_tree_rss_mb: float
    """The most the child and all its descendants (Spark: the JVM and its Python workers)
    held together, sampled every 0.2 s."""
    redis_cpu_s: float
    client_cpu_s: float
    """The child's own CPU (user + system, its descendants included, e.g. Spark's JVM)."""

    @property
    def per_second(self) -> float:
        """Entity groups written per second of wall time (process start to exit)."""
        return self.entities / self.seconds

    @property
    def per_run_second(self) -> float:
        """Entity groups written per second of the run itself (no interpreter start)."""
        return self.entities / self.run_seconds

    def cells(self) -> list[str]:
        """The row of the report table."""
        return [
            self.label,
            f"{self.users:,}",
            f"{self.seconds:.1f}",
            f"{self.per_second:,.0f}",
            f"{self.per_run_second:,.0f}",
            f"{self.peak_rss_mb:,.0f}",
            f"{self.peak_tree_rss_mb:,.0f}",
            f"{self.redis_cpu_s:.2f}",
            f"{1e6 * self.redis_cpu_s / max(self.entities, 1):.1f}",
            f"{1e6 * self.client_cpu_s / max(self.entities, 1):.1f}",
        ]


HEADER = [
    "code",
    "users",
    "wall s",
    "entities/s",
    "entities/s of the run",
    "peak RSS MB",
    "peak RSS of the tree MB",
    "Redis CPU s",
    "Redis CPU µs/entity",
    "client CPU µs/entity",
]


def _redis_cpu_s(urls: Sequence[str]) -> float:
    total = 0.0
    for url in urls:
        client = redis.Redis.from_url(url)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def _flush(urls: Sequence[str]) -> None:
    for url in urls:
        client = redis.Redis.from_url(url)
        try:
            if client.info("replication")["role"] == "master":
                client.flushall()
        finally:
            client.close()


def measure(
    label: str,
    table: Path,
    users: int,
    redis_url: str,
    node_urls: Sequence[str],
    *,
    source: Path | None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Measured:
    """Run ``featserve materialize`` as a child on an empty store and measure it."""
    _flush(node_urls)
    child_env = {
        **os.environ,
        **(env or {}),
        "REDIS_URL": redis_url,
        "FEATSERVE_PROJECT": str(EXAMPLE_PROJECT),
    }
    entry = "from service.cli.main import main; sys.exit(main())"
    if source is not None:
        # The editable install's import hook would still find this tree's packages first.
        entry = (
            "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            f"getattr(f, '__module__', '')]; sys.path.insert(0, {str(source)!r}); " + entry
        )
    command = [
        sys.executable,
        "-c",
        "import sys; " + entry,
        "materialize",
        str(table),
        "--group",
        GROUP,
        "--json",
        *extra,
    ]
    cpu_before = _redis_cpu_s(node_urls)
    started = time.perf_counter()
    child = subprocess.Popen(
        command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert child.stdout is not None
    tree_peak = [0]
    sampler = threading.Thread(target=_sample_tree_rss, args=(child.pid, tree_peak), daemon=True)
    sampler.start()
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    sampler.join()
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu_after = _redis_cpu_s(node_urls)
    if child.returncode != 0:
        raise RuntimeError(f"{label}: featserve materialize exited {child.returncode}: {output!r}")
    report = json.loads(output.decode().strip().splitlines()[-1])
    return Measured(
        label,
        users,
        seconds,
        float(report["elapsed_s"]),
        int(report["entity_groups_written"]),
        usage.ru_maxrss / 1024,
        tree_peak[0] / 2**20,
        cpu_after - cpu_before,
        usage.ru_utime + usage.ru_stime,
    )


def _sample_tree_rss(pid: int, peak: list[int]) -> None:
    """Keep in ``peak[0]`` the most RSS that ``pid`` and its descendants held at once."""
    try:
        root = psutil.Process(pid)
        while root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += process.memory_info().rss
            peak[0] = max(peak[0], total)
            time.sleep(0.2)
    except psutil.NoSuchProcess:
        return


@contextmanager
def _store(cluster: bool) -> Iterator[tuple[str, list[str], str]]:
    """The URL to write to, every node's URL, and the mode (for ``FEATSERVE_REDIS_MODE``)."""
    if cluster:
        with LocalCluster() as nodes:
            yield nodes.url, [node.url for node in nodes.primaries()], "cluster"
    else:
        with LocalRedis() as server:
            yield server.url, [server.url], "standalone"


def demo_table(users: int, out: Path) -> Path:
    """The demo ``user:features`` table of ``users`` users in ``out``, written unless there."""
    table = out / "user_features.parquet"
    if table.exists():
        return table
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from service.cli.main import main; sys.exit(main())",
            "demo-data",
            "--users",
            str(users),
            "--out",
            str(out),
            "--project",
            str(EXAMPLE_PROJECT),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return table


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _ratios(users: int, before: Sequence[Measured], after: Sequence[Measured]) -> str:
    """This branch over the baseline: medians of the rounds."""

    def ratio(figure: Callable[[Measured], float]) -> float:
        return _median([figure(m) for m in after]) / _median([figure(m) for m in before])

    return (
        f"{users:,} users, this branch / baseline (medians of {len(after)} rounds): "
        f"entities/s {ratio(lambda m: m.per_second):.2f}x, "
        f"of the run {ratio(lambda m: m.per_run_second):.2f}x, "
        f"Redis CPU per entity {ratio(lambda m: m.redis_cpu_s / m.entities):.2f}x, "
        f"client CPU per entity {ratio(lambda m: m.client_cpu_s / m.entities):.2f}x, "
        f"peak RSS {ratio(lambda m: m.peak_rss_mb):.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, nargs="+", default=[200_000])
    parser.add_argument("--baseline-source", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tables", type=Path)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--engine", choices=["local", "spark"], default="local")
    args = parser.parse_args(argv)
    rows: list[list[str]] = []
    summaries: list[str] = []
    load_before = os.getloadavg()
    extra = ["--engine", "spark", "--spark-master", "local[2]"] if args.engine == "spark" else []
    label = "this branch" + (" (spark local[2])" if args.engine == "spark" else "")
    with (
        tempfile.TemporaryDirectory(prefix="materialize-bench-") as work,
        _store(args.cluster) as (url, node_urls, mode),
    ):
        env = {"FEATSERVE_REDIS_MODE": mode}
        tables = args.tables or Path(work)
        for users in args.users:
            table = demo_table(users, tables / f"u{users}")
            before: list[Measured] = []
            after: list[Measured] = []
            for _ in range(args.rounds):
                if args.baseline_source is not None:
                    before.append(
                        measure(
                            "baseline",
                            table,
                            users,
                            url,
                            node_urls,
                            source=args.baseline_source,
                            env=env,
                        )
                    )
                    rows.append(before[-1].cells())
                after.append(
                    measure(label, table, users, url, node_urls, source=None, extra=extra, env=env)
                )
                rows.append(after[-1].cells())
            if before:
                summaries.append(_ratios(users, before, after))
    print(f"store: {mode}; load average before the run: {load_before}")
    print(markdown_table(HEADER, rows))
    for summary in summaries:
        print(summary)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
