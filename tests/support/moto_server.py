"""A moto server (DynamoDB and the rest of AWS, in memory) in a subprocess, for the tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.harness.local_redis import free_port

__all__ = ["aws_env", "moto_server"]

START_TIMEOUT_S = 30.0


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port, for as long as the context lasts; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{url}/moto-api/"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {url}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except OSError:
        return False


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    """Dummy credentials and ``endpoint_url``, as a deployment would set them."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
