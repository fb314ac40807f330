"""A project of someone else's, served without a line of featserve changed, from source
and from a Bento that ``featserve build`` staged.

The project lives in a temporary folder of its own, with its own ``models/``
subfolder holding a scikit-learn transformer class: it is trained from a CSV
with ``featserve train``, its features are loaded with ``featserve
materialize`` under its key prefix, and ``bentoml serve`` serves it.  The API
is the project's (its field names, bounds, title and version), its regression
model (a ``Pipeline`` holding the project's own class, unpickled in the
service) answers what the test computes from the values it wrote, and a model
trained for another project is refused at start-up, naming why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import redis

from features.project_loader import load_project
from service.harness.local_redis import LocalRedis, free_port
from service.harness.served import ROOT, bentoml_serve_command, clean_environment
from service.harness.waiting import wait_until
from tests.e2e.conftest import start_service, stop
from tests.support.sla_check import assert_meets_the_sla

PROJECT_PY = """\
from datetime import timedelta

from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

from features.project import (
    DerivedFeatures, Entity, Feature, FeatureGroup, LatencyBudget, ModelSpec, Project,
    RegressionValue, RequestInput, Structure,
)

from .derived import derive_batch, derive_one
from .models.scaling import Halve

CARD = Entity("card", "A payment card.")
STATS = FeatureGroup("stats", CARD, Structure.HASH, timedelta(hours=1), (
    Feature("spend_7d", "float", 0.0, "Spend over 7 days.", minimum=0),
    Feature("declines_24h", "int", 0, "Declines in 24 hours.", minimum=0),
))
PROJECT = Project(
    name="cards", title="Card spend", description="Predicts a card's next payment.",
    version="2.5", entity=CARD, entity_field="card_id", groups=(STATS,),
    request=(RequestInput("price", "float", "Payment amount.", minimum=0, maximum=10000,
                          example=40.0),),
    derived=DerivedFeatures(("price_to_spend",), ("price", "spend_7d"), derive_one, derive_batch),
    model=ModelSpec(("spend_7d", "declines_24h", "price", "price_to_spend"),
                    RegressionValue("Expected next payment."),
                    estimator=lambda seed: make_pipeline(Halve(), Ridge())),
    budget=LatencyBudget(total_ms=100, features_ms=20),
    key_prefix="cards:",
)
"""

DERIVED_PY = """\
import numpy as np


def derive_one(row):
    return {"price_to_spend": row["price"] / max(row["spend_7d"], 1.0)}


def derive_batch(columns):
    spend = np.maximum(np.asarray(columns["spend_7d"], dtype=np.float64), 1.0)
    return {"price_to_spend": np.asarray(columns["price"], dtype=np.float64) / spend}
"""

SCALING_PY = '''\
from sklearn.base import BaseEstimator, TransformerMixin


class Halve(TransformerMixin, BaseEstimator):
    """Halves every input: a class only this project defines."""

    def fit(self, inputs, labels=None):
        self.n_features_in_ = inputs.shape[1]
        return self

    def transform(self, inputs):
        return inputs / 2.0
'''

CARDS = 20
WRITTEN = {f"c{i:04d}": {"spend_7d": 10.0 * i + 5.0, "declines_24h": i % 3} for i in range(CARDS)}


@dataclass
class Served:
    url: str
    redis: LocalRedis
    folder: Path


def featserve(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def write_project(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "project.py").write_text(PROJECT_PY)
    (folder / "derived.py").write_text(DERIVED_PY)
    (folder / "models" / "__init__.py").write_text("")
    (folder / "models" / "scaling.py").write_text(SCALING_PY)
    # A package of the project's own, beyond featserve's pins (the Bento installs both).
    (folder / "requirements.txt").write_text("pyyaml>=6.0.1\n")
    return folder


@pytest.fixture(scope="module")
def served(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = write_project(tmp_path_factory.mktemp("own") / "cards")
    work = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(5)
    n = 600
    spend = rng.uniform(0, 300, n)
    price = rng.uniform(0, 200, n)
    rows = pa.table(
        {
            "spend_7d": spend,
            "declines_24h": rng.integers(0, 4, n),
            "price": price,
            "label": 0.3 * spend + 0.5 * price + rng.normal(0, 1, n),
        }
    )
    pa_csv.write_csv(rows, work / "rows.csv")
    env = {**clean_environment(), "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "1"}
    featserve("train", str(folder), "--data", str(work / "rows.csv"), env=env)
    features = pa.table(
        {
            "entity_id": list(WRITTEN),
            "event_timestamp": [int(time.time())] * CARDS,
            "spend_7d": [v["spend_7d"] for v in WRITTEN.values()],
            "declines_24h": [v["declines_24h"] for v in WRITTEN.values()],
        }
    )
    pq.write_table(features, work / "stats.parquet")
    # A Redis that answers at once however busy the machine (service.harness.realtime), so
    # the Bento below meets its budget at shipped settings or fails for its own doing.
    with LocalRedis(realtime=True) as redis_server:
        table = str(work / "stats.parquet")
        args = ["materialize", table, "--project", str(folder), "--group", "card:stats"]
        featserve(*args, env={**env, "REDIS_URL": redis_server.url})
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path_factory.mktemp("logs"),
            FEATSERVE_PROJECT=str(folder),
            FEATSERVE_FEATURE_DEADLINE_MS="1000",
            FEATSERVE_REDIS_SOCKET_TIMEOUT_MS="1000",
        )
        try:
            yield Served(url, redis_server, folder)
        finally:
            stop(process)


def expected(served: Served, bentoml_home: Path, card: str, price: float) -> float:
    """The saved pipeline's prediction on the row built here from the values written."""
    load_project(served.folder)  # so the pickled project class can be found
    root = bentoml_home / "models" / "cards_model"
    version = root / (root / "latest").read_text().strip()
    pipeline = joblib.load(version / "model.pkl")
    spend = WRITTEN[card]["spend_7d"]
    row = [[spend, WRITTEN[card]["declines_24h"], price, price / max(spend, 1.0)]]
    return float(pipeline.predict(np.asarray(row, dtype=np.float64))[0])


def test_the_api_is_the_projects(served: Served) -> None:
    spec = httpx.get(f"{served.url}/docs.json").json()
    assert (spec["info"]["title"], spec["info"]["version"]) == ("Card spend", "2.5")
    assert spec["info"]["description"] == "Predicts a card's next payment."
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert set(schema["properties"]) == {"card_id", "price"}
    assert schema["properties"]["price"]["maximum"] == 10000


def test_the_model_answers_from_the_values_written_under_the_prefix(
    served: Served, bentoml_home: Path
) -> None:
    keys = redis.Redis.from_url(served.redis.url).keys("*")
    assert b"cards:card:{c0003}:stats" in keys
    response = httpx.post(f"{served.url}/score", json={"card_id": "c0003", "price": 50.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["card_id"] == "c0003"
    assert body["sources"] == {"stats": "redis"}
    assert "threshold" not in body
    assert body["score"] == pytest.approx(expected(served, bentoml_home, "c0003", 50.0), rel=1e-9)
    batch = httpx.post(
        f"{served.url}/score_batch",
        json={"requests": [{"card_id": c, "price": 20.0} for c in ("c0001", "c0002")]},
    ).json()
    assert [r["card_id"] for r in batch["results"]] == ["c0001", "c0002"]
    assert batch["results"][1]["score"] == pytest.approx(
        expected(served, bentoml_home, "c0002", 20.0), rel=1e-9
    )


def test_a_body_that_breaks_the_declarations_is_a_400_naming_the_field(served: Served) -> None:
    response = httpx.post(f"{served.url}/score", json={"card_id": "c0001", "price": 20000.0})
    assert response.status_code == 400
    assert "price" in response.json()["error"]
    response = httpx.post(f"{served.url}/score", json={"entity_id": "c0001", "price": 1.0})
    assert response.status_code == 400
    assert "card_id" in response.json()["error"]


def test_a_model_of_another_project_is_refused_at_start_up(
    served: Served, bentoml_home: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    env = {
        **clean_environment(),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "REDIS_URL": served.redis.url,
        "FEATSERVE_PROJECT": str(served.folder),
        "FEATSERVE_MODEL_TAG": "fraud_model:latest",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            bentoml_serve_command("service.service:ScoringService", free_port()),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        said = "was trained on inputs this code no longer builds"
        wait_until(lambda: said in log_path.read_text(), timeout_s=90, poll_s=0.2)
        assert "input 'price' added" in log_path.read_text()
    finally:
        stop(process)


UV = Path(sys.executable).parent / "uv"


def test_featserve_build_packs_the_project_into_a_bento_that_serves_its_own_copy(
    served: Served, bentoml_home: Path, tmp_path: Path
) -> None:
    env = {
        **clean_environment(),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{UV.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = featserve("build", str(served.folder), "--name", "cards", env=env)
    name, _, version = out.strip().splitlines()[-1].removeprefix("__tag__:").partition(":")
    bento = bentoml_home / "bentos" / name / version
    packed = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    assert {"projects/cards/project.py", "projects/cards/models/scaling.py"} <= packed
    assert "service/service.py" in packed
    assert not [p for p in packed if p.startswith(("service/cli/", "service/harness/"))]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "pyyaml>=6.0.1" in requirements
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    requirements_file = bento / "env" / "python" / "requirements.txt"
    install = ["pip", "install", "--quiet", "--python", str(python), "-r", str(requirements_file)]
    subprocess.run([str(UV), *install], check=True)
    subprocess.run([python, "-c", "import yaml"], check=True)
    deployed = tmp_path / "deployment" / "bento"
    shutil.copytree(bento, deployed)
    process, url, _ = start_service(
        bentoml_home,
        served.redis,
        tmp_path,
        target=str(deployed),
        cwd=deployed,
        python=python,
        PYTHONPATH="",
        # The Bento's own `--arg project=projects/cards` wins: the folder it was built from
        # is not read (it could be gone).  Shipped settings otherwise.
        FEATSERVE_PROJECT=str(tmp_path / "no-such-project"),
    )
    try:
        spec = httpx.get(f"{url}/docs.json").json()
        assert spec["info"]["title"] == "Card spend"
        response = httpx.post(f"{url}/score", json={"card_id": "c0003", "price": 50.0})
        assert response.status_code == 200, response.text
        from_source = httpx.post(
            f"{served.url}/score", json={"card_id": "c0003", "price": 50.0}
        ).json()
        assert response.json()["score"] == from_source["score"]
        # What the README's CI recipe runs, at the project's own budget, real answers only.
        assert_meets_the_sla(f"{url}/score", served.folder, "--entities", "c0000..c0019")
    finally:
        stop(process)
