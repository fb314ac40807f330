"""Serving a BentoML service for tests, drills, benchmarks and ``make serve``: one way to start
``bentoml serve``, wait until it is ready, and stop it with every worker it started.

Usage::

    process, url, log_path = start_service(bentoml_home, redis_server, log_dir)
    try:
        ...  # requests to url
    finally:
        stop(process)

    with running_service(bentoml_home, None, log_dir, target="bench.echo_service:Echo",
                         cpus="0") as (process, url):
        ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from service.harness.local_redis import LocalRedis, free_port

__all__ = [
    "EXAMPLE_PROJECT",
    "READY_TIMEOUT_S",
    "ROOT",
    "SERVICE",
    "bentoml_serve_command",
    "clean_environment",
    "running_service",
    "start_service",
    "stop",
    "train_small_model",
    "wait_until_ready",
]

ROOT = Path(__file__).resolve().parents[2]

READY_TIMEOUT_S = 120.0
"""How long a starting service may take to answer ``/readyz`` (loading BentoML, the model and
the store takes seconds; a cold machine under other load, much longer)."""

SERVICE = "service.service:ScoringService"
"""The featserve service, as ``bentoml serve`` names it."""

EXAMPLE_PROJECT = ROOT / (ROOT / "examples" / "default-project").read_text().strip()
"""The example project the tests and benchmarks serve unless told otherwise, and ``make
serve`` by default too: the one named in ``examples/default-project``, which the Makefile's
``PROJECT`` reads as well."""


def train_small_model(bentoml_home: Path, project: Path = EXAMPLE_PROJECT) -> None:
    """Train a small model of ``project`` into ``bentoml_home``, in a subprocess (BentoML
    fixes its home the first time a process uses the store)."""
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "models.train", "--project", str(project)]
    subprocess.run(
        [*command, "--n-entities", "2000", "--n-rows", "6000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def bentoml_serve_command(
    target: str,
    port: int,
    cpus: str | None = None,
    python: str | Path = sys.executable,
) -> list[str]:
    """``[taskset -c CPUS] PYTHON -m bentoml serve TARGET`` on 127.0.0.1:``port``."""
    pinned = ["taskset", "-c", cpus] if cpus else []
    return [
        *pinned, str(python), "-m", "bentoml", "serve", target,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def start_service(
    bentoml_home: Path,
    redis_server: LocalRedis | None,
    log_dir: Path,
    target: str = SERVICE,
    cwd: str | Path = ROOT,
    cpus: str | None = None,
    python: str | Path = sys.executable,
    **env_overrides: str,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Serve ``target`` (a service path, a Bento tag or folder) on a free 127.0.0.1 port.

    The service's environment is this process's without ``FEATSERVE_*``, ``OTEL_*``,
    ``BENCH_*`` and ``REDIS_URL``, plus ``FEATSERVE_PROJECT`` (the example project), ``REDIS_URL``
    of ``redis_server`` (when given), ``FEATSERVE_DRAIN_S=0`` and ``env_overrides``.

    Returns ``(process, base URL, log file)`` once ``/readyz`` answers; stops the server when
    it does not (or the wait is interrupted).  ``cpus`` pins the server and its workers with
    ``taskset`` (e.g. ``"0"``); ``python`` is the interpreter whose BentoML serves.
    """
    port = free_port()
    log_path = log_dir / f"bentoml-{port}.log"
    env = {
        **clean_environment(),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        # Stopped by ``stop`` at the end of a test or benchmark, nobody to drain for: stop at
        # once unless the caller measures the drain (tests/e2e/test_drain.py).
        "FEATSERVE_DRAIN_S": "0",
        "FEATSERVE_PROJECT": str(EXAMPLE_PROJECT),
        **({} if redis_server is None else {"REDIS_URL": redis_server.url}),
        **env_overrides,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            bentoml_serve_command(target, port, cpus, python),
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, READY_TIMEOUT_S)
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{target}: {exc}\n{log_path.read_text()}") from None
    except BaseException:  # Ctrl-C or SIGTERM while waiting: still stop the server.
        stop(process)
        raise
    return process, url, log_path


@contextlib.contextmanager
def running_service(
    bentoml_home: Path,
    redis_server: LocalRedis | None,
    log_dir: Path,
    target: str = SERVICE,
    cpus: str | None = None,
    **env_overrides: str,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``start_service`` as a block: yields ``(process, base URL)``, stops it on the way out."""
    process, url, _ = start_service(
        bentoml_home, redis_server, log_dir, target, cpus=cpus, **env_overrides
    )
    try:
        yield process, url
    finally:
        stop(process)


def wait_until_ready(
    base_url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    path: str = "/readyz",
    name: str = "bentoml serve",
) -> None:
    """Poll ``path`` (default ``/readyz``) until it answers 200; raise, naming the server
    ``name``, if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready within {timeout_s:.0f} s")


def clean_environment() -> dict[str, str]:
    """This process's environment without featserve's, OpenTelemetry's and the benchmarks'
    settings: a served service gets exactly the settings its caller passes."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FEATSERVE_", "OTEL_", "BENCH_")) and name != "REDIS_URL"
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``bentoml serve`` and wait for it, then kill any of its workers that outlived it."""
    # psutil is a test and benchmark dependency; `make serve` never stops a service this way.
    import psutil

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
