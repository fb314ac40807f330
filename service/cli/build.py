"""``featserve build [PROJECT]``: a Bento of featserve and a project from anywhere.

BentoML packs only files under its build folder, so a project kept elsewhere is
staged first: featserve's own sources (what ``bentofile.yaml`` includes) and a copy
of the project under ``projects/<folder name>/`` (the folder keeps its name, so the
project's module names, and with them any pickled class of its, stay the same) go to
a temporary build folder, with a ``bentofile.yaml`` that also includes the project and
requirements that are featserve's pinned ones (``requirements/bento.txt``) plus the
project's own (its ``requirements.txt``, if it has one).
``bentoml build --arg project=projects/<name>`` then stores the argument in the Bento,
which loads its own packed copy when served, never the folder it was built from.  Prints
the Bento's tag, as ``bentoml build -o tag``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from features.errors import ProjectError
from features.settings import Settings
from service.cli.project_option import chosen_project
from service.harness.served import ROOT

__all__ = ["register", "stage"]

EXIT_USAGE = 2
PROJECTS = "projects"
"""The folder of the build context (and of the Bento's ``src``) that holds the project."""

_IGNORED = shutil.ignore_patterns("__pycache__", ".*", "*.pyc")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve build``."""
    parser = commands.add_parser("build", help="build a Bento serving a project from anywhere")
    parser.add_argument("project_dir", nargs="?", metavar="PROJECT", help="the project folder")
    parser.add_argument("--name", default="featserve", help="the Bento's name (featserve)")
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    args.project = args.project_dir or args.project
    try:
        chosen_project(args)  # a project that does not load is refused before anything is built
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    folder = Path(args.project or (args.settings or Settings()).project or "").resolve()
    with tempfile.TemporaryDirectory(prefix="featserve-build-") as scratch:
        context, relative = stage(folder, Path(scratch), args.name)
        # BentoML reads the bentofile only from under the working directory.
        command = [sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"]
        built = subprocess.run(
            [*command, "--arg", f"project={relative}"],
            cwd=context,
            env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
            check=False,
        )
    return built.returncode


def stage(project: Path, into: Path, name: str = "featserve") -> tuple[Path, str]:
    """Copy featserve's sources and ``project`` into ``into``, write its ``bentofile.yaml``;
    return the build folder and the project's path relative to it."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    for package in ("features", "models", "service"):
        shutil.copytree(ROOT / package, into / package, ignore=_IGNORED)
    relative = f"{PROJECTS}/{project.name}"
    shutil.copytree(project, into / relative, ignore=_IGNORED)
    config["name"] = name
    config["include"] = [
        *(pattern for pattern in config["include"] if not pattern.startswith("examples/")),
        f"{relative}/**",
    ]
    # featserve's runtime pins (requirements/bento.txt), then the project's own lines.
    pinned = (ROOT / config["python"]["requirements_txt"]).read_text()
    own = project / "requirements.txt"
    extra = own.read_text() if own.is_file() else ""
    combined = into / "requirements" / "bento.txt"
    combined.parent.mkdir(exist_ok=True)
    combined.write_text(f"{pinned.rstrip()}\n# The project's own requirements:\n{extra}")
    config["python"]["requirements_txt"] = "./requirements/bento.txt"
    (into / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return into, relative
