"""Shared pieces of the benchmark report: latency statistics, Markdown tables, the machine.

Usage::

    stats = Stats.of([0.0012, 0.0011, ...], wall_s=2.0)  # latencies in seconds
    print(markdown_table(["case", *Stats.HEADER], [["bare", *stats.cells()]]))
    section = Section("Pipelining", "Intro text.", [table], plots=[])
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import redis

from service.harness.stats import percentile

__all__ = [
    "Section",
    "Stats",
    "machine_lines",
    "markdown_table",
    "ratio",
    "time_async",
    "time_sync",
]


@dataclass(frozen=True)
class Stats:
    """Percentiles in milliseconds and throughput of one measured case."""

    HEADER = ("n", "p50 ms", "p90 ms", "p99 ms", "max ms", "ops/s")

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    per_s: float
    """Completed operations per second of wall time."""

    @classmethod
    def of(cls, latencies_s: Sequence[float], wall_s: float) -> Stats:
        """Statistics of ``latencies_s`` (seconds) completed in ``wall_s`` seconds."""
        ordered = sorted(v * 1000.0 for v in latencies_s)
        return cls(
            len(ordered),
            percentile(ordered, 50.0),
            percentile(ordered, 90.0),
            percentile(ordered, 99.0),
            ordered[-1] if ordered else math.nan,
            len(ordered) / wall_s if wall_s > 0 else math.nan,
        )

    def cells(self) -> list[str]:
        """The values of ``HEADER``, formatted."""
        return [
            str(self.n),
            _ms(self.p50_ms),
            _ms(self.p90_ms),
            _ms(self.p99_ms),
            _ms(self.max_ms),
            f"{self.per_s:,.0f}",
        ]


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` as ``"1.23x"`` (``"-"`` when undefined)."""
    if not baseline or math.isnan(value) or math.isnan(baseline):
        return "-"
    return f"{value / baseline:.2f}x"


def time_sync(operation: Callable[[], object], count: int) -> Stats:
    """Run ``operation`` ``count`` times back to back, timing each call."""
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        begin = time.perf_counter()
        operation()
        latencies.append(time.perf_counter() - begin)
    return Stats.of(latencies, time.perf_counter() - started)


async def time_async(operation: Callable[[], Awaitable[object]], count: int) -> Stats:
    """Await ``operation()`` ``count`` times back to back, timing each call."""
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        begin = time.perf_counter()
        await operation()
        latencies.append(time.perf_counter() - begin)
    return Stats.of(latencies, time.perf_counter() - started)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns are left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if i >= left else ("-" * (w + 2)) for i, w in enumerate(widths)
    )
    return "\n".join([line(header), rule + "|", *(line(row) for row in rows)])


@dataclass
class Section:
    """One scenario's part of the report: prose, tables, and plots saved alongside."""

    title: str
    intro: str
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def markdown(self, doc_dir: Path) -> str:
        """The section as Markdown; plot links are relative to ``doc_dir``."""
        parts = [f"### {self.title}", self.intro, *self.tables, *self.notes]
        parts += [f"![{p.stem}]({os.path.relpath(p, doc_dir)})" for p in self.plots]
        return "\n\n".join(part.strip() for part in parts if part.strip())


def _cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_lines() -> list[str]:
    """nproc, the lscpu model, the load average and the versions that matter."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"- CPUs: {os.cpu_count()} (`nproc`), `lscpu` model name: {_cpu_model()}",
        f"- Python {platform.python_version()}, BentoML {bentoml.__version__}, "
        f"redis-py {redis.__version__}",
        f"- load average (1, 5, 15 min) when the run started: {load}",
    ]
