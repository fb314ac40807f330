"""Notice when a CPU stops running anything: a process that wakes every millisecond.

Usage: ``python -m bench.stall_watch OUT`` (started pinned to a CPU by
``StallWatch``).  It sleeps 1 ms at a time and appends to ``OUT`` each gap
longer than ``STALL_S`` as two ``time.monotonic()`` readings (system-wide on
Linux, so comparable with other processes' times).  A process that only
sleeps is scheduled within a few milliseconds of waking, even beside a
busy one, so a long gap means the CPU was taken away (the virtual machine
paused, the kernel busy), and no gap during a slow request means the CPU
was there and the time went inside the service.  ``make faults`` uses it
with ``--watch-cpu`` to tell the two apart; off by default, since its
wake-ups share the worker's CPU and widen the worker's tail a little.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["STALL_S", "Stall", "StallWatch", "overlapping"]

STALL_S = 0.004
"""The shortest gap recorded: four wake-ups missed."""

Stall = tuple[float, float]
"""(start, end) of a gap, in ``time.monotonic()`` seconds."""


class StallWatch:
    """Stalls of one CPU, recorded by a watcher process while the context is open."""

    def __init__(self, out: Path, cpu: int | None) -> None:
        self._out = out
        self._cpu = cpu

    @contextmanager
    def running(self) -> Iterator[StallWatch]:
        """Start the watcher; stop it on the way out."""
        command = [sys.executable, "-m", "bench.stall_watch", str(self._out)]
        if self._cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self._cpu), *command]
        process = subprocess.Popen(command)
        try:
            yield self
        finally:
            process.terminate()
            process.wait(timeout=10)

    def stalls(self) -> list[Stall]:
        """Every gap recorded so far."""
        if not self._out.exists():
            return []
        return [
            (float(start), float(end))
            for start, end in (line.split() for line in self._out.read_text().splitlines())
        ]


def overlapping(stalls: list[Stall], start: float, end: float) -> list[Stall]:
    """The stalls that overlap ``[start, end]``."""
    return [stall for stall in stalls if stall[0] < end and stall[1] > start]


def main() -> None:
    """Record gaps until terminated."""
    with Path(sys.argv[1]).open("a", buffering=1) as out:
        last = time.monotonic()
        while True:
            time.sleep(0.001)
            now = time.monotonic()
            if now - last > STALL_S:
                out.write(f"{last:.6f} {now:.6f}\n")
            last = now


if __name__ == "__main__":
    main()
