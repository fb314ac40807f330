"""A project folder loads by path, under featserve_project.*, and never shadows featserve."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import features
import models
from features.errors import ProjectError
from features.project import Project
from features.project_loader import load_project, package_name

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """\
from datetime import timedelta

from features.project import (
    ClassProbability, DerivedFeatures, Entity, Feature, FeatureGroup, LatencyBudget,
    ModelSpec, Project, RequestInput, Structure,
)
from .derived import derive_batch, derive_one

CARD = Entity("card")
PROJECT = Project(
    name="cards",
    title="Card scores",
    version="1.2",
    entity=CARD,
    groups=(
        FeatureGroup("stats", CARD, Structure.HASH, timedelta(hours=1), (
            Feature("spend_7d", "float", 0.0, minimum=0),
        )),
    ),
    request=(RequestInput("price", "float", minimum=0),),
    derived=DerivedFeatures(("price_to_spend",), ("price", "spend_7d"), derive_one, derive_batch),
    model=ModelSpec(("spend_7d", "price", "price_to_spend"), ClassProbability("is_risky")),
    budget=LatencyBudget(total_ms=50, features_ms=10),
)
"""

DERIVED = """\
import numpy as np


def derive_one(row):
    return {"price_to_spend": row["price"] / max(row["spend_7d"], 1.0)}


def derive_batch(columns):
    spend = np.maximum(np.asarray(columns["spend_7d"], dtype=np.float64), 1.0)
    return {"price_to_spend": np.asarray(columns["price"], dtype=np.float64) / spend}
"""


def write_project(
    folder: Path, project: str = MINIMAL, files: dict[str, str] | None = None
) -> Path:
    """A project folder: ``project.py``, ``derived.py`` and ``files`` (relative path: text)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "project.py").write_text(project)
    (folder / "derived.py").write_text(DERIVED)
    for name, text in (files or {}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture(autouse=True)
def forget_loaded_projects() -> Iterator[None]:
    """Each test loads its projects afresh."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("featserve_project."):
            del sys.modules[name]


def test_a_project_loads_from_its_path_into_plain_objects(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "cards_a")
    path_before = list(sys.path)
    project = load_project(folder)
    assert isinstance(project, Project)
    assert project.name == "cards"
    assert project.registry.group("card", "stats").feature_names == ("spend_7d",)
    assert project.input_by_name("price").minimum == 0
    assert sys.path == path_before
    module = sys.modules["featserve_project.cards_a.project"]
    assert module.PROJECT is project
    assert project.derived is not None
    assert project.derived.one.__module__ == "featserve_project.cards_a.derived"


def test_loading_twice_returns_the_same_project(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "cards_b")
    assert load_project(folder) is load_project(str(folder))


def test_a_project_with_its_own_models_and_features_folders_shadows_nothing(
    tmp_path: Path,
) -> None:
    own = write_project(
        tmp_path / "shadowing",
        MINIMAL.replace(
            "from .derived import",
            "import models.schema\nfrom .models.scaler import SCALE\n"
            "from .features import MARK\nfrom .derived import",
        ),
        {
            "models/__init__.py": "",
            "models/scaler.py": "SCALE = 2.0\n",
            "features/__init__.py": "MARK = 'the project features'\n",
        },
    )
    load_project(own)
    assert sys.modules["models"] is models
    assert sys.modules["features"] is features
    assert Path(models.__file__).parent == ROOT / "models"
    assert sys.modules["featserve_project.shadowing.models.scaler"].SCALE == 2.0
    assert sys.modules["featserve_project.shadowing.features"].MARK == "the project features"


def test_stray_files_of_the_folder_are_never_imported(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "cards_c")
    (folder / "scratch.py").write_text("raise RuntimeError('a scratch file ran')\n")
    checkpoints = folder / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "project-checkpoint.py").write_text("raise RuntimeError('a checkpoint')\n")
    assert load_project(folder).name == "cards"


def test_a_project_class_unpickles_in_a_process_that_loaded_the_project(tmp_path: Path) -> None:
    folder = write_project(
        tmp_path / "pickled",
        MINIMAL.replace("from .derived", "from .transform import Halve\nfrom .derived"),
        {"transform.py": "class Halve:\n    def __init__(self, by):\n        self.by = by\n"},
    )
    load_project(folder)
    halve = sys.modules["featserve_project.pickled.transform"].Halve(3)
    (tmp_path / "halve.pkl").write_bytes(pickle.dumps(halve))
    probe = (
        "import pickle, sys\n"
        "from features.project_loader import load_project\n"
        f"load_project({str(folder)!r})\n"
        f"restored = pickle.loads(open({str(tmp_path / 'halve.pkl')!r}, 'rb').read())\n"
        "print(type(restored).__module__, restored.by)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["featserve_project.pickled.transform", "3"]


def test_a_bad_declaration_names_the_file_and_line(tmp_path: Path) -> None:
    bad = MINIMAL.replace('Feature("spend_7d", "float", 0.0', 'Feature("spend_7d", "float", "x"')
    folder = write_project(tmp_path / "bad_default", bad)
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if '"x"' in text)
    with pytest.raises(ProjectError, match=rf"project\.py:{line}: RegistryError: .*spend_7d"):
        load_project(folder)
    assert "featserve_project.bad_default" not in sys.modules


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    folder = write_project(tmp_path / "syntax", MINIMAL + "\nPROJECT = (\n")
    with pytest.raises(ProjectError, match=r"project\.py:\d+: SyntaxError"):
        load_project(folder)


def test_a_folder_without_project_py_or_project_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no such file"):
        load_project(tmp_path / "nothing")
    folder = write_project(tmp_path / "noproject", "X = 1\n")
    with pytest.raises(ProjectError, match=r"declares no PROJECT = Project\(\.\.\.\)"):
        load_project(folder)


def test_two_folders_of_one_name_are_refused(tmp_path: Path) -> None:
    load_project(write_project(tmp_path / "one" / "twin"))
    with pytest.raises(ProjectError, match="another project folder named 'twin'"):
        load_project(write_project(tmp_path / "two" / "twin"))


def test_module_names_are_identifiers_of_the_folder_name() -> None:
    assert package_name(Path("/x/my-project")) == "featserve_project.my_project"
    assert package_name(Path("/x/2024 model")) == "featserve_project.p_2024_model"


def test_the_digest_follows_the_derived_code_and_not_the_title(tmp_path: Path) -> None:
    first = load_project(write_project(tmp_path / "digest_a"))
    retitled = load_project(
        write_project(tmp_path / "digest_b", MINIMAL.replace('version="1.2"', 'version="9"'))
    )
    assert retitled.digest == first.digest
    changed = write_project(tmp_path / "digest_c")
    (changed / "derived.py").write_text(DERIVED.replace("1.0)", "2.0)"))
    assert load_project(changed).digest != first.digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('RequestInput("price"', 'RequestInput("spend_7d"'), "has the name of a stored feature"),
        (('("spend_7d", "price", "price_to_spend")', '("spend_7d", "cost")'), r"\['cost'\]"),
        (('("price", "spend_7d"), derive_one', '("price", "x"), derive_one'), r"unknown names"),
        (("minimum=0),)", "minimum=0, required=False),)"), "needs a default"),
    ],
)
def test_inconsistent_declarations_are_refused_by_name(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    folder = write_project(tmp_path / "inconsistent", MINIMAL.replace(*change))
    with pytest.raises(ProjectError, match=message):
        load_project(folder)
