"""``--project DIR``, which every subcommand takes: the project whose registry it works on.

``--project`` wins over ``FEATSERVE_PROJECT``; the project is loaded once per command.
"""

from __future__ import annotations

import argparse

from features.errors import ProjectError
from features.project import Project
from features.project_loader import load_project
from features.settings import Settings

__all__ = ["add_project_option", "chosen_project"]


def add_project_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--project DIR`` option."""
    parser.add_argument(
        "--project",
        metavar="DIR",
        help="the project folder (default: FEATSERVE_PROJECT)",
    )


def chosen_project(args: argparse.Namespace) -> Project:
    """The project ``--project`` names, else ``FEATSERVE_PROJECT`` (of ``args.settings`` when
    the caller passed settings); ``ProjectError`` when neither does."""
    settings: Settings = getattr(args, "settings", None) or Settings()
    folder = getattr(args, "project", None) or settings.project
    if not folder:
        raise ProjectError("no project: pass --project DIR or set FEATSERVE_PROJECT")
    return load_project(folder)
