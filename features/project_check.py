"""``check_project``: what is wrong with a project folder, before it is served.

Each ``Finding`` names where (a file and line, or a declaration) and what:

- the project does not load (``features.project_loader``: a bad declaration, an
  import error, a syntax error, no ``PROJECT``), with the file and line;
- a project file imports featserve beyond its documented API (``features.project``):
  ``features.<anything else>``, ``models``, ``service``, ``bench`` or ``tests``.  Relative
  imports of the project's own modules (``from .models import ...``) are the project's.
  Only ``project.py`` and what it imports run, but every ``*.py`` of the folder is read
  (hidden folders and ``__pycache__`` aside), since any of them may be imported later;
- the derived features' two forms: on the training defaults and on ``RANDOM_ROWS`` random
  valid rows (within every declared bound), ``one`` and ``batch`` must return the declared
  names, finite values, and exactly equal values row by row.
"""

from __future__ import annotations

import ast
import inspect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ProjectError
from features.project import Project, RequestInput
from features.project_loader import load_project
from features.registry import Feature

__all__ = ["DOCUMENTED_API", "RANDOM_ROWS", "Finding", "check_project"]

DOCUMENTED_API = "features.project"
"""The one module of featserve a project imports."""

RANDOM_ROWS = 500
"""Random valid rows the derived features are run on, besides the defaults."""

_OURS = ("features", "models", "service", "bench", "tests")
_LATEST_TIMESTAMP = 4_102_444_800  # 2100-01-01, the largest timestamp an input takes by default


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a project: where, and what."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def check_project(folder: str | Path, seed: int = 0) -> tuple[Project | None, list[Finding]]:
    """Load the project in ``folder`` and check it; the project (``None`` when it does not
    load) and every finding, in the order above."""
    root = Path(folder).expanduser().resolve()
    findings = _imports_beyond_the_api(root)
    try:
        project = load_project(root)
    except ProjectError as exc:
        where, _, problem = str(exc).partition(": ")
        return None, [Finding(where, problem), *findings]
    if project.derived is not None:
        findings.extend(_derived_disagreements(project, seed))
    return project, findings


def _imports_beyond_the_api(root: Path) -> list[Finding]:
    findings = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError:
            continue  # the loader reports it, with its line, when the file is imported
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _absolute_imports(node):
                if name.split(".")[0] in _OURS and name != DOCUMENTED_API:
                    findings.append(
                        Finding(
                            f"{path}:{node.lineno}",
                            f"imports {name}, which is featserve's own code: a project "
                            f"imports only {DOCUMENTED_API} (its own modules relatively)",
                        )
                    )
    return findings


def _absolute_imports(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0 and node.module:
        if node.module in _OURS:
            return [f"{node.module}.{alias.name}" for alias in node.names]
        return [node.module]
    return []


def _derived_disagreements(project: Project, seed: int) -> list[Finding]:
    derived = project.derived
    assert derived is not None
    rng = random.Random(seed)
    columns = {name: draw(rng) for name, draw in _drawers(project).items()}
    rows = [{name: column[i] for name, column in columns.items()} for i in range(RANDOM_ROWS)]
    rows.insert(0, _defaults(project))
    batch_columns = {name: [row[name] for row in rows] for name in rows[0]}
    where_one, where_batch = _where(derived.one), _where(derived.batch)
    names = set(derived.names)
    try:
        batch = derived.batch(batch_columns)
    except Exception as exc:
        return [Finding(where_batch, f"batch raised {type(exc).__name__}: {exc}")]
    if set(batch) != names:
        return [Finding(where_batch, f"batch returns {sorted(batch)}, not {sorted(names)}")]
    for name in derived.names:
        if np.shape(batch[name]) != (len(rows),):
            shape = np.shape(batch[name])
            return [Finding(where_batch, f"batch's {name!r} has shape {shape}, not a column")]
    for index, row in enumerate(rows):
        label = "the training defaults" if index == 0 else f"random row {row}"
        try:
            one = derived.one(row)
        except Exception as exc:
            return [Finding(where_one, f"one raised {type(exc).__name__}: {exc} on {label}")]
        if set(one) != names:
            return [Finding(where_one, f"one returns {sorted(one)}, not {sorted(names)}")]
        for name in derived.names:
            single, column = float(one[name]), float(batch[name][index])
            if not math.isfinite(single):
                return [Finding(where_one, f"{name!r} is {single} on {label}")]
            if single != column:
                return [
                    Finding(
                        where_one,
                        f"{name!r}: one gives {single!r}, batch gives {column!r} on {label}",
                    )
                ]
    return []


def _where(function: Callable[..., Any]) -> str:
    try:
        return f"{inspect.getsourcefile(function)}:{inspect.getsourcelines(function)[1]}"
    except (OSError, TypeError):
        return repr(function)


def _defaults(project: Project) -> dict[str, Any]:
    values: dict[str, Any] = {n: f.default for n, f in project.stored_features.items()}
    for item in project.request:
        values[item.name] = _typical(item)
    return values


def _typical(item: RequestInput) -> int | float:
    if item.default is not None:
        return item.default
    if item.example is not None:
        return item.example
    low = item.minimum if item.minimum is not None else 0
    return int(low) if item.is_integer else float(low)


def _drawers(project: Project) -> Mapping[str, Callable[[random.Random], list[Any]]]:
    drawers: dict[str, Callable[[random.Random], list[Any]]] = {}
    for name, feature in project.stored_features.items():
        drawers[name] = _feature_draw(feature)
    for item in project.request:
        drawers[item.name] = _input_draw(item)
    return drawers


def _bounded_draw(
    integer: bool, low: float | None, high: float | None, top: float
) -> Callable[[random.Random], list[Any]]:
    lo = 0.0 if low is None else low
    hi = max(lo, top) if high is None else high
    if integer:
        return lambda rng: [rng.randint(math.ceil(lo), math.floor(hi)) for _ in range(RANDOM_ROWS)]
    return lambda rng: [rng.uniform(lo, hi) for _ in range(RANDOM_ROWS)]


def _feature_draw(feature: Feature) -> Callable[[random.Random], list[Any]]:
    integer = feature.type_name == "int"
    return _bounded_draw(integer, feature.minimum, feature.maximum, 1e6)


def _input_draw(item: RequestInput) -> Callable[[random.Random], list[Any]]:
    top = _LATEST_TIMESTAMP if item.type == "timestamp" else 1e6
    return _bounded_draw(item.is_integer, item.minimum, item.maximum, top)
