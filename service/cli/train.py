"""``featserve train PROJECT --data TABLE``: fit the project's model on a table and save it.

The table (Parquet, or CSV with a header) holds one row per example: the
stored features as they were served (a missing value is the feature's
training default, as the service would serve it), the request inputs (a
missing optional input takes its default) and the label column the project
names.  The rows are built into inputs with the project's own derived
features, the estimator the project names is fitted on a seeded split and
measured on the held-out part, and the model is saved to the BentoML model
store with the project digest, the input schema and the metrics
(``models.train``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from rich.console import Console

from features.errors import ProjectError
from features.project import Project
from models.train import default_model_name, save, train
from service.cli.project_option import chosen_project

__all__ = ["read_training_table", "register"]

EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve train``."""
    parser = commands.add_parser("train", help="fit the project's model on a table and save it")
    parser.add_argument("project_dir", nargs="?", metavar="PROJECT", help="the project folder")
    parser.add_argument("--data", type=Path, required=True, help="Parquet or CSV training rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=float, default=0.25, help="held-out share (0.25)")
    parser.add_argument("--name", help="model name in the BentoML store (<project>_model)")
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    args.project = args.project_dir or args.project
    try:
        project = chosen_project(args)
        columns = read_training_table(project, args.data)
        result = train(project, columns, args.seed, args.test_size)
    except (ProjectError, ValueError, OSError, pa.ArrowException) as exc:
        console.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    measures = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k[:2] != "n_")
    print(
        f"trained on {result.metrics['n_train']:.0f} rows, held out "
        f"{result.metrics['n_test']:.0f}: {measures}"
    )
    if result.threshold is not None:
        print(f"threshold {result.threshold:.4f}")
    print(f"saved {save(result, args.name or default_model_name(project))}")
    return 0


def read_training_table(project: Project, path: Path) -> dict[str, Any]:
    """The columns ``train`` needs from the table at ``path`` (the model's stored and request
    inputs, what the derived features read, the label), as numpy arrays; a missing stored
    value becomes its training default, a missing optional input its default.  ``ValueError``
    names an absent column or a missing value that has no default."""
    table = pq.read_table(path) if path.suffix == ".parquet" else pa_csv.read_csv(path)
    derived = set(project.derived.names) if project.derived else set()
    reads = project.derived.reads if project.derived else ()
    needed = [n for n in dict.fromkeys([*project.model.inputs, *reads]) if n not in derived]
    label = project.model.label_column
    absent = [name for name in [*needed, label] if name not in table.column_names]
    if absent:
        raise ValueError(f"{path}: no column {', '.join(map(repr, absent))}")
    stored = project.stored_features
    columns: dict[str, Any] = {}
    for name in needed:
        if name in stored:
            default = stored[name].default
        else:
            item = project.input_by_name(name)
            default = None if item.required or item.type == "timestamp" else item.default
        columns[name] = _filled(table.column(name), default, path, name)
    columns[label] = _filled(table.column(label), None, path, label)
    return columns


def _filled(column: pa.ChunkedArray, default: Any, path: Path, name: str) -> Any:
    if column.null_count:
        if default is None:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} missing values")
        column = column.fill_null(default)
    return column.to_numpy()
