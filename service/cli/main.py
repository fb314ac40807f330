"""``featserve``: the command line.  Each subcommand (a module here) parses its arguments and
calls library code.

featserve materialize TABLE [--group user:features] [--rejects FILE] [--allow-rejects]
featserve rewarm [--backing sqlite:PATH | dynamodb:TABLE] [--group user:features]
featserve sla --url URL [--profile payments] [--total-ms N --features-ms N]
              [--rate R | --concurrency C] [--duration S] [--entities N|FIRST..LAST] [--plot FILE]
featserve demo-data [--users 10000] [--out var/demo] [--format parquet|csv]
featserve capacity --entities N --peak-rps R --latency-ms L [--measure | --bytes-per-entity B]
featserve train [PROJECT] --data TABLE [--seed S] [--test-size F] [--name NAME]
featserve check [PROJECT] [--model TAG]
featserve init DIR [--name NAME]
featserve build [PROJECT] [--name featserve]

Every subcommand takes ``--project DIR`` (default: ``FEATSERVE_PROJECT``).

Only the chosen subcommand's module is imported: ``featserve materialize`` loads neither
BentoML nor scikit-learn (``featserve --help`` and an unknown subcommand import them all).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from features.errors import ProjectError
from features.redaction import install_log_redaction
from features.settings import Settings
from service.cli.project_option import add_project_option, chosen_project

__all__ = ["main"]

SUBCOMMANDS = ("materialize", "rewarm", "sla", "capacity", "train", "check", "init", "build")
"""The subcommands that are modules of ``service.cli``, each with a ``register`` function."""


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Run one subcommand; the exit code says how it went.

    ``settings`` stands in for the environment's (``Settings()``), for callers that run
    the command line in-process against a Redis of their own.
    """
    install_log_redaction()
    parser = argparse.ArgumentParser(prog="featserve", description="featserve command line")
    commands = parser.add_subparsers(dest="command", required=True)
    arguments = sys.argv[1:] if argv is None else list(argv)
    chosen = arguments[:1] if arguments[:1] and arguments[0] in SUBCOMMANDS else SUBCOMMANDS
    for name in chosen:
        importlib.import_module(f"service.cli.{name}").register(commands)
    _add_demo_data(commands)
    for command in commands.choices.values():
        add_project_option(command)
    args = parser.parse_args(arguments)
    args.settings = settings
    code: int = args.run(args)
    return code


def _add_demo_data(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("demo-data", help="write the project's demo offline tables")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("var/demo"))
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> int:
    try:
        project = chosen_project(args)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if project.demo is None:
        print(f"error: project {project.name!r} brings no demo data", file=sys.stderr)
        return 2
    paths = project.demo.write_tables(args.out, args.users, int(time.time()), args.format)
    for group, path in paths.items():
        print(f"{group}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
