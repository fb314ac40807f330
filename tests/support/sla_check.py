"""The SLA check a CI job runs against what ships (the Bento, the container image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.harness.served import EXAMPLE_PROJECT, clean_environment

__all__ = ["assert_meets_the_example_sla"]


def assert_meets_the_example_sla(score_url: str) -> None:
    """``featserve sla`` (the README's CI recipe) against ``score_url``: the example project's
    budget met with real answers only, over 500 requests, so that p99 is the fifth slowest,
    not one stall of a shared machine."""
    featserve = Path(sys.executable).parent / "featserve"
    checked = subprocess.run(
        [
            featserve, "sla", "--url", score_url, "--profile", "fraud",
            "--project", str(EXAMPLE_PROJECT),
            "--rate", "100", "--duration", "5", "--warmup", "1", "--entities", "20", "--json",
        ],
        capture_output=True,
        text=True,
        env=clean_environment(),
    )  # fmt: skip
    verdict = json.loads(checked.stdout)
    assert (checked.returncode, verdict["met"]) == (0, True), checked.stderr
    assert verdict["degraded"] == 0
    assert set(verdict["sources"]) <= {"redis", "cache"}
