"""The example project (``EXAMPLE_PROJECT``) as tests and benchmarks use it: loaded once.

``EXAMPLE`` is the loaded ``Project`` and ``EXAMPLE_REGISTRY`` its registry;
``example_module("dataset")`` is one of the project's own modules (imported under
``featserve_project.<folder name>``, as the loader names them).
"""

from __future__ import annotations

import importlib
import types

from features.project_loader import load_project, package_name
from service.harness.served import EXAMPLE_PROJECT

__all__ = ["EXAMPLE", "EXAMPLE_REGISTRY", "example_module"]

EXAMPLE = load_project(EXAMPLE_PROJECT)
"""The example project."""

EXAMPLE_REGISTRY = EXAMPLE.registry
"""Its entities and feature groups."""


def example_module(name: str) -> types.ModuleType:
    """The example project's module ``name`` (e.g. ``dataset``, ``derived``, ``groups``)."""
    return importlib.import_module(f"{package_name(EXAMPLE_PROJECT)}.{name}")
