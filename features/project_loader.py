"""Load a project folder once, by its path, under a private module namespace.

``load_project(folder)`` imports ``folder/project.py`` as the module
``featserve_project.<folder name>.project`` and returns the ``Project`` it
names ``PROJECT``.  The folder becomes the package ``featserve_project.<folder
name>`` (its ``__init__.py`` runs when there is one), so a project's own
modules import each other relatively (``from .derived import ...``) and live
under that package too: a project's ``models/`` or ``features/`` folder is
``featserve_project.<name>.models``, and can never shadow featserve's
``models`` or ``features``.  The folder is never put on ``sys.path``.

Module names are stable (the folder's name, made an identifier), so a
``Pipeline`` that holds a class the project defines unpickles in any process
that loaded the same project first.  Only ``project.py`` and what it imports
run: stray files (notebooks, checkpoints, scratch scripts) are never imported.

A failure names the project's file and line where it happened.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import traceback
import types
from pathlib import Path

from features.errors import ProjectError
from features.project import Project

__all__ = ["NAMESPACE", "PROJECT_FILE", "load_project", "package_name"]

NAMESPACE = "featserve_project"
"""The package every project is imported under."""

PROJECT_FILE = "project.py"
"""The file of a project folder that declares ``PROJECT``."""


def package_name(folder: Path) -> str:
    """The module name of the project in ``folder``: ``featserve_project.<folder name>``."""
    name = re.sub(r"\W", "_", folder.name.strip(), flags=re.ASCII) or "project"
    if name[0].isdigit():
        name = f"p_{name}"
    return f"{NAMESPACE}.{name}"


def load_project(folder: str | Path) -> Project:
    """The ``Project`` that ``folder/project.py`` declares as ``PROJECT``.

    Loading the same folder again returns the same object; loading another folder of
    the same name in the same process is refused, since both would need one module name.
    """
    root = Path(folder).expanduser().resolve()
    declared = root / PROJECT_FILE
    if not declared.is_file():
        raise ProjectError(f"{declared}: no such file; a project folder holds {PROJECT_FILE}")
    package = package_name(root)
    loaded = sys.modules.get(package)
    if loaded is not None:
        if list(getattr(loaded, "__path__", [])) != [str(root)]:
            raise ProjectError(
                f"{root}: another project folder named {root.name!r} is already loaded "
                f"({list(getattr(loaded, '__path__', []))}); rename one of the two folders"
            )
    else:
        _import_package(package, root)
    try:
        module = importlib.import_module(f"{package}.project")
    except Exception as exc:
        _forget(package)
        raise ProjectError(f"{_where(exc, root)}: {type(exc).__name__}: {exc}") from exc
    project = getattr(module, "PROJECT", None)
    if not isinstance(project, Project):
        _forget(package)
        raise ProjectError(
            f"{declared}: declares no PROJECT = Project(...) (found {type(project).__name__})"
        )
    return project


def _import_package(package: str, root: Path) -> None:
    if NAMESPACE not in sys.modules:
        namespace = types.ModuleType(NAMESPACE, "The packages of loaded featserve projects.")
        namespace.__path__ = []
        sys.modules[NAMESPACE] = namespace
    init = root / "__init__.py"
    spec = (
        importlib.util.spec_from_file_location(
            package, init, submodule_search_locations=[str(root)]
        )
        if init.is_file()
        else importlib.machinery.ModuleSpec(package, None, is_package=True)
    )
    if spec is None:  # pragma: no cover - spec_from_file_location of an existing .py file
        raise ProjectError(f"{init}: cannot be imported")
    spec.submodule_search_locations = [str(root)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    setattr(sys.modules[NAMESPACE], package.rpartition(".")[2], module)
    if spec.loader is not None:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            _forget(package)
            raise ProjectError(f"{_where(exc, root)}: {type(exc).__name__}: {exc}") from exc


def _forget(package: str) -> None:
    """Drop a project that failed to load, and its submodules, so a fixed one loads."""
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        del sys.modules[name]
    namespace = sys.modules.get(NAMESPACE)
    if namespace is not None and hasattr(namespace, package.rpartition(".")[2]):
        delattr(namespace, package.rpartition(".")[2])


def _where(exc: BaseException, root: Path) -> str:
    """``file:line`` of the deepest frame of ``exc`` inside the project, else the folder."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    inside = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if Path(frame.filename).is_relative_to(root)
    ]
    if not inside:
        return str(root / PROJECT_FILE)
    return f"{inside[-1].filename}:{inside[-1].lineno}"
