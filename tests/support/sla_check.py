"""The SLA check a CI job runs against what ships (the Bento, the container image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.harness.served import EXAMPLE_PROJECT, clean_environment

__all__ = ["assert_meets_the_example_sla", "assert_meets_the_sla"]


def assert_meets_the_sla(score_url: str, project: Path, *options: str) -> None:
    """``featserve sla`` (the README's CI recipe) against ``score_url``: ``project``'s own
    latency budget met with real answers only, over 500 requests, so that p99 is the fifth
    slowest, not one stall of a shared machine.  ``options`` go to the command too."""
    featserve = Path(sys.executable).parent / "featserve"
    checked = subprocess.run(
        [
            featserve, "sla", "--url", score_url, "--project", str(project),
            "--rate", "100", "--duration", "5", "--warmup", "1", "--json", *options,
        ],
        capture_output=True,
        text=True,
        env=clean_environment(),
    )  # fmt: skip
    verdict = json.loads(checked.stdout)
    assert (checked.returncode, verdict["met"]) == (0, True), checked.stderr
    assert verdict["degraded"] == 0
    assert set(verdict["sources"]) <= {"redis", "cache"}


def assert_meets_the_example_sla(score_url: str) -> None:
    """The example project's SLA, over 20 demo entities."""
    assert_meets_the_sla(score_url, EXAMPLE_PROJECT, "--entities", "20")
