"""A real ``bentoml serve`` in a subprocess, over a real Redis with demo data.

The model is trained into a temporary BentoML home once per session, in a
subprocess, so the tests never touch the user's model store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from features.local_redis import LocalRedis, free_port
from service.demo import load_demo_data, wait_until_ready

DEMO_USERS = 300
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningService:
    """A served FraudScorer, its Redis, and an HTTP client for it."""

    url: str
    redis: LocalRedis
    client: httpx.Client
    log_path: Path


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home holding a freshly trained (small) fraud model."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [sys.executable, "-m", "models.train", "--n-users", "2000", "--n-transactions", "6000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return home


def start_service(
    bentoml_home: Path,
    redis_server: LocalRedis,
    log_dir: Path,
    target: str = "service.service:FraudScorer",
    cwd: str | Path = ROOT,
    **env_overrides: str,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Serve ``target`` (a service path or a Bento tag) against ``redis_server``, once ready."""
    port = free_port()
    log_path = log_dir / f"bentoml-{port}.log"
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "REDIS_URL": redis_server.url,
        **env_overrides,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "bentoml", "serve", target,
                "--host", "127.0.0.1", "--port", str(port),
            ],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 120.0)
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{exc}\n{log_path.read_text()}") from None
    return process, url, log_path


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a served process and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def service(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The service over its own Redis holding demo users u000000..u000299."""
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, DEMO_USERS, tmp_path_factory.mktemp("demo"))
        process, url, log_path = start_service(
            bentoml_home, redis_server, tmp_path_factory.mktemp("logs"), FEATSERVE_CACHE_TTL_S="0"
        )
        try:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                yield RunningService(url, redis_server, client, log_path)
        finally:
            stop(process)
