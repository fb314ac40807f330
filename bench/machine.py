"""The machine under a benchmark: which CPU the server gets and which the load, who used them,
and how much memory the server's workers hold.

Usage::

    cpus = pin_cpus()                      # this process (load generator, Redis) to CPU 1
    before = CpuSnapshot.take(server_pid)
    ...                                    # load the server
    shares = CpuSnapshot.take(server_pid).shares_since(before)  # who used the CPUs, in %
    rss = worker_rss(server_pid)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass

import psutil

__all__ = ["CpuSnapshot", "CpuSplit", "pin_cpus", "worker_rss"]


@dataclass(frozen=True)
class CpuSplit:
    """Which CPU the server gets and which the load generator (and Redis) get."""

    server: int | None
    load: int | None

    def describe(self) -> str:
        """One line for the report."""
        if self.server is None:
            return "not pinned: server, load generator and Redis share every CPU"
        return (
            f"pinned with taskset: bentoml serve and its worker on CPU {self.server}; "
            f"load generator and Redis on CPU {self.load}"
        )


def pin_cpus() -> CpuSplit:
    """Move this process (and so Redis and the trainer it starts) to the second CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return CpuSplit(None, None)
    os.sched_setaffinity(0, {cpus[1]})
    return CpuSplit(cpus[0], cpus[1])


def worker_rss(server_pid: int) -> int:
    """RSS in bytes summed over the descendants of ``server_pid`` (``bentoml serve``'s workers)."""
    total = 0
    for child in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


def _tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by ``process`` and its live descendants."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: by the server, by this process's tree, by the machine."""

    at_s: float
    server_s: float
    ours_s: float
    """This process and every descendant, the server included."""
    machine_s: float
    """Every CPU's busy time (user, nice, system, irq, softirq) since boot."""
    steal_s: float
    """Time the hypervisor gave our virtual CPUs to someone else."""

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        """Read the counters now."""
        machine = psutil.cpu_times()
        return cls(
            at_s=time.perf_counter(),
            server_s=_tree_cpu_s(psutil.Process(server_pid)),
            ours_s=_tree_cpu_s(psutil.Process()),
            machine_s=machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
            steal_s=getattr(machine, "steal", 0.0),
        )

    def shares_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Percent of one CPU used since ``before`` by the server, the rest of ours, others."""
        wall = self.at_s - before.at_s
        server = self.server_s - before.server_s
        ours = self.ours_s - before.ours_s
        machine = self.machine_s - before.machine_s
        return {
            "server": 100.0 * server / wall,
            "load generator + Redis": 100.0 * (ours - server) / wall,
            "other processes": 100.0 * max(0.0, machine - ours) / wall,
            "steal": 100.0 * (self.steal_s - before.steal_s) / wall,
        }
