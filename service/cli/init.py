"""``featserve init DIR``: write a minimal project to start from.

``DIR/project.py`` declares one entity with one hash group of two features, one
request input, one derived feature (``derived.py``, both forms), a classifier and
a 50/10 ms budget; ``DIR/README.md`` says what to change and which commands follow.
An existing ``project.py`` is never overwritten.  ``featserve check DIR`` passes on
what it writes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

__all__ = ["register", "write_project"]

EXIT_USAGE = 2

PROJECT_PY = '''\
"""The {name} project: what featserve serves (edit the declarations to your own)."""

from datetime import timedelta
from typing import TYPE_CHECKING

from features.project import (
    ClassProbability,
    DerivedFeatures,
    Entity,
    Feature,
    FeatureGroup,
    LatencyBudget,
    ModelSpec,
    Project,
    RequestInput,
    Structure,
)

from .derived import DERIVED, READS, derive_batch, derive_one

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingClassifier

ACCOUNT = Entity("account", "What a request is about.")

STATS = FeatureGroup(
    "stats",
    ACCOUNT,
    Structure.HASH,
    freshness=timedelta(hours=1),
    features=(
        Feature("spend_7d", "float", 0.0, "Spend over the last 7 days.", minimum=0),
        Feature("events_24h", "int", 0, "Events in the last 24 hours.", minimum=0),
    ),
)


def estimator(seed: int) -> "GradientBoostingClassifier":
    """What `featserve train` fits (scikit-learn imported here: other commands need no model)."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(random_state=seed)


PROJECT = Project(
    name="{name}",
    title="{name}",
    description="Scores requests with features from Redis.",
    version="0.1",
    entity=ACCOUNT,
    entity_field="account_id",
    groups=(STATS,),
    request=(RequestInput("amount", "float", "The request's amount.", minimum=0, example=25.0),),
    derived=DerivedFeatures(DERIVED, READS, derive_one, derive_batch),
    model=ModelSpec(
        inputs=("spend_7d", "events_24h", "amount", *DERIVED),
        answer=ClassProbability(label="flagged"),
        estimator=estimator,
    ),
    budget=LatencyBudget(total_ms=50, features_ms=10),
)
'''

DERIVED_PY = '''\
"""Derived features: one row in plain Python, many rows as numpy columns; they must agree."""

import numpy as np

DERIVED = ("amount_to_spend",)
READS = ("amount", "spend_7d")


def derive_one(row):
    """The derived features of one request, by name."""
    return {{"amount_to_spend": row["amount"] / max(row["spend_7d"], 1.0)}}


def derive_batch(columns):
    """The same, one float64 column per name."""
    spend = np.maximum(np.asarray(columns["spend_7d"], dtype=np.float64), 1.0)
    return {{"amount_to_spend": np.asarray(columns["amount"], dtype=np.float64) / spend}}
'''

README_MD = """\
# {name}

A featserve project. Change `project.py` (entities, groups, request inputs, the model)
and `derived.py`, then:

    featserve check {folder}
    featserve train {folder} --data rows.csv       # columns: spend_7d, events_24h, amount, label
    featserve materialize stats.parquet --project {folder} --group account:stats
    bentoml serve service.service:ScoringService --arg project={folder}
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve init``."""
    parser = commands.add_parser("init", help="write a minimal project to start from")
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument("--name", help="the project's name (default: the folder's)")
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    try:
        written = write_project(args.folder, args.name)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}")
        return EXIT_USAGE
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def write_project(folder: Path, name: str | None = None) -> list[Path]:
    """Write the minimal project into ``folder``; the files written."""
    name = name or re.sub(r"\W", "_", folder.resolve().name, flags=re.ASCII)
    if not (name.isidentifier() and name.isascii()):
        raise ValueError(f"project name {name!r} must be an ASCII identifier (--name)")
    if (folder / "project.py").exists():
        raise FileExistsError(f"{folder / 'project.py'} exists: nothing was written")
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "project.py": PROJECT_PY.format(name=name),
        "derived.py": DERIVED_PY.format(),
        "README.md": README_MD.format(name=name, folder=folder),
    }
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    return [folder / file_name for file_name in files]
