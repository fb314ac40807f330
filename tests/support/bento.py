"""What ships, built and started as a deployment would: a Bento of a project, a fresh
virtualenv holding only the Bento's own requirements, and the Bento served from a folder
of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.harness.local_redis import LocalRedis
from service.harness.served import ROOT, start_service, stop

__all__ = ["bento_virtualenv", "build_bento", "served_bento"]

UV = Path(sys.executable).parent / "uv"


def build_bento(bentoml_home: Path, project: str) -> Path:
    """``bentoml build --arg project=<project>`` (relative to the repository: the Bento
    loads its own packed copy) into ``bentoml_home``; the Bento's folder."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{UV.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    built = subprocess.run(
        [
            sys.executable, "-m", "bentoml", "build", "--output", "tag",
            "--arg", f"project={project}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, _, version = tag.partition(":")
    assert name == "featserve"
    return bentoml_home / "bentos" / name / version


def bento_virtualenv(bento: Path, folder: Path) -> Path:
    """A fresh virtualenv in ``folder`` holding only what the Bento's requirements.txt asks
    for, installed by the pip that ``python -m venv`` puts there; its python."""
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([base_python, "-m", "venv", folder], check=True)
    python = folder / "bin" / "python"
    requirements = bento / "env" / "python" / "requirements.txt"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-input", "-r", requirements],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    return python


@contextmanager
def served_bento(
    bento: Path, python: Path, bentoml_home: Path, redis_server: LocalRedis, scratch: Path
) -> Iterator[str]:
    """The Bento, copied to a folder of its own, served from there by ``python`` over
    ``redis_server``; its base URL."""
    folder = scratch / "bento"
    shutil.copytree(bento, folder)
    process, url, _ = start_service(
        bentoml_home,
        redis_server,
        scratch,
        target=str(folder),
        cwd=folder,
        python=python,
        PYTHONPATH="",
        # The Bento's own `--arg project=...`, stored when it was built, wins over this.
        FEATSERVE_PROJECT=str(folder / "no-such-project"),
    )
    try:
        yield url
    finally:
        stop(process)
