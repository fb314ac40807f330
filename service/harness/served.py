"""Serving the FraudScorer for tests and drills: a small trained model, `bentoml serve`, stop."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil

from service.cli.demo import wait_until_ready
from service.harness.local_redis import LocalRedis, free_port

__all__ = ["ROOT", "clean_environment", "start_service", "stop", "train_small_model"]

ROOT = Path(__file__).resolve().parents[2]


def train_small_model(bentoml_home: Path) -> None:
    """Train a small fraud model into ``bentoml_home``, in a subprocess (BentoML fixes its home
    the first time a process uses the store)."""
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [sys.executable, "-m", "models.train", "--n-users", "2000", "--n-transactions", "6000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def start_service(
    bentoml_home: Path,
    redis_server: LocalRedis,
    log_dir: Path,
    target: str = "service.service:FraudScorer",
    cwd: str | Path = ROOT,
    cpus: str | None = None,
    python: str | Path = sys.executable,
    **env_overrides: str,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Serve ``target`` (a service path, a Bento tag or folder) against ``redis_server``.

    The service's environment is this process's without ``FEATSERVE_*``, ``OTEL_*`` and
    ``REDIS_URL``, plus ``env_overrides``.

    Returns once ``/readyz`` answers.  ``cpus`` pins the server and its workers with
    ``taskset`` (e.g. ``"0"``); ``python`` is the interpreter whose BentoML serves.
    """
    port = free_port()
    log_path = log_dir / f"bentoml-{port}.log"
    env = {
        **clean_environment(),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "REDIS_URL": redis_server.url,
        **env_overrides,
    }
    with log_path.open("wb") as log:
        pinned = ["taskset", "-c", cpus] if cpus else []
        process = subprocess.Popen(
            [
                *pinned, str(python), "-m", "bentoml", "serve", target,
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


def clean_environment() -> dict[str, str]:
    """This process's environment without featserve's settings or OpenTelemetry's: a served
    service gets exactly the settings its caller passes."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FEATSERVE_", "OTEL_")) and name != "REDIS_URL"
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``bentoml serve`` and wait for it, then kill any of its workers that outlived it."""
    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    psutil.wait_procs(workers, timeout=10)
