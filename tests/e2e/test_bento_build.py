"""`bentoml build` packs what `bentoml serve` needs: the built Bento scores from another folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import ROOT, start_service, stop


def test_the_built_bento_serves_scores(bentoml_home: Path, tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("featserve:")
    with LocalRedis() as redis_server:
        process, url, _ = start_service(
            bentoml_home, redis_server, tmp_path, target=tag, cwd=str(tmp_path)
        )
        try:
            response = httpx.post(f"{url}/score", json={"entity_id": "u1", "amount": 5.0})
        finally:
            stop(process)
    assert response.status_code == 200, response.text
    assert response.json()["sources"] == {"features": "default"}
