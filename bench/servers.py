"""Serving a BentoML service for a benchmark, pinned to chosen CPUs, always stopped afterwards.

Usage::

    with serve("bench.echo_service:Echo", env, cpus="0", log_dir=tmp) as (pid, port):
        ...  # load 127.0.0.1:port

The service runs as ``[taskset -c CPUS] python -m bentoml serve TARGET`` on
a free 127.0.0.1 port; the block is entered once ``/readyz`` answers, and
the server and its workers are stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.sustained import READY_TIMEOUT_S, ROOT
from service.cli.demo import wait_until_ready
from service.harness.local_redis import free_port
from service.harness.served import stop

__all__ = ["base_env", "serve"]


def base_env(bentoml_home: Path) -> dict[str, str]:
    """This environment without ``BENCH_*``/``FEATSERVE_*`` variables, with the BentoML home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BENCH_", "FEATSERVE_"))
    }
    return env | {"BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}


@contextmanager
def serve(
    target: str, env: Mapping[str, str], cpus: str | None, log_dir: Path
) -> Iterator[tuple[int, int]]:
    """Serve ``target``; yield ``(server pid, port)``; stop it on the way out."""
    port = free_port()
    command = [
        sys.executable, "-m", "bentoml", "serve", target,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if cpus is not None and shutil.which("taskset"):
        command = ["taskset", "-c", cpus, *command]
    log_path = log_dir / f"{target.replace(':', '-')}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", process, READY_TIMEOUT_S)
        except RuntimeError as exc:
            raise RuntimeError(f"{target}: {exc}\n{log_path.read_text()}") from None
        yield process.pid, port
    finally:
        stop(process)
