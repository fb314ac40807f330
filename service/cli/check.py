"""``featserve check [PROJECT] [--model TAG]``: is a project ready to be served?

Loads the project and checks it (``features.project_check``: it loads, imports only
featserve's documented API, its derived features agree in both forms on the defaults and
on random valid rows); with ``--model``, also that the model in the BentoML store fits it
(``models.train.check_servable``: schema, project digest, answer, interface).  Prints one
line per problem, naming the file and line or the declaration; exit 0 when there is none,
1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse

import bentoml
from rich.console import Console

from features.project_check import check_project
from features.settings import Settings
from models.train import check_servable, load

__all__ = ["register"]

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve check``."""
    parser = commands.add_parser("check", help="check a project before it is served")
    parser.add_argument("project_dir", nargs="?", metavar="PROJECT", help="the project folder")
    parser.add_argument("--model", help="also check this model of the BentoML store, e.g. x:latest")
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    console = Console()
    folder = args.project_dir or args.project or (args.settings or Settings()).project
    if not folder:
        console.print("[red]error:[/] no project: pass PROJECT or set FEATSERVE_PROJECT")
        return EXIT_USAGE
    project, findings = check_project(folder)
    problems = [str(finding) for finding in findings]
    if project is not None and args.model:
        try:
            check_servable(load(args.model), project)
        except bentoml.exceptions.NotFound:
            problems.append(f"{args.model}: no such model in the BentoML store")
        except ValueError as exc:
            problems.append(str(exc))
    for problem in problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        return EXIT_PROBLEMS
    assert project is not None
    console.print(f"project {project.name!r} ({folder}) is ready to serve", highlight=False)
    return 0
