"""PNG plots of the benchmark report (matplotlib, the ``bench`` extra).

Usage::

    stage_distribution({"features": [...], "total": [...]}, Path("docs/img/stages.png"), "title")
    latency_by_entities({"featserve p50": [(1, 0.9), (100, 4.1)]}, Path("docs/img/n.png"), "title")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["latency_by_entities", "stage_distribution"]


def stage_distribution(stages_ms: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """One box per stage (whiskers at p1 and p99), log scale; returns ``path``."""
    names = [name for name, values in stages_ms.items() if values]
    figure, axes = plt.subplots(figsize=(8, 0.5 + 0.55 * len(names)))
    axes.boxplot(
        [[max(v, 1e-3) for v in stages_ms[name]] for name in names],
        vert=False,
        whis=(1, 99),
        showfliers=False,
        tick_labels=names,
    )
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds (log scale); box p25-p75, line p50, whiskers p1-p99")
    axes.set_title(title)
    axes.invert_yaxis()
    axes.grid(axis="x", which="both", linewidth=0.3)
    return _save(figure, path)


def latency_by_entities(
    series: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str
) -> Path:
    """Latency against entities per request, one line per series, log-log; returns ``path``."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(xs, ys, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("entities per request")
    axes.set_ylabel("milliseconds (log scale)")
    axes.set_title(title)
    axes.grid(which="both", linewidth=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
