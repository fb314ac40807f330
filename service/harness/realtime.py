"""Real-time scheduling for the parts of a rig that stand in for the network and the store.

A test that puts Redis 5 ms away through a proxy means Redis to be 5 ms away.
On a machine busy with other work, an ordinary process waits for a CPU,
and the proxy or Redis answers a few milliseconds late: the service under
test then meets a slower network than the test meant, and misses deadlines
it would have met.  A process under ``SCHED_RR`` runs as soon as it is
runnable, ahead of every ordinary process, so the proxy forwards on time
and Redis answers at once however busy the machine; they are idle between
requests, so they take nothing from anyone.

Changing the policy needs root (``CAP_SYS_NICE``) or an ``RLIMIT_RTPRIO``
limit; where neither is at hand the rig runs at ordinary priority, which
``realtime_allowed`` tells.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

__all__ = ["PRIORITY", "become_realtime", "realtime_allowed", "realtime_command"]

PRIORITY = 1
"""The lowest real-time priority: ahead of every ordinary process, behind the kernel's own."""


@functools.cache
def realtime_allowed() -> bool:
    """Whether this process may start children under ``SCHED_RR`` (tried once, on ``true``)."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return False
    tried = subprocess.run([chrt, "--rr", str(PRIORITY), "true"], capture_output=True)
    return tried.returncode == 0


def realtime_command() -> list[str]:
    """A prefix that runs a command and every thread it starts under ``SCHED_RR``, when allowed;
    empty otherwise."""
    return ["chrt", "--rr", str(PRIORITY)] if realtime_allowed() else []


def become_realtime() -> bool:
    """Put the calling thread (and the threads it starts from now on) under ``SCHED_RR``;
    whether that was allowed."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(PRIORITY))
    except PermissionError:
        return False
    return True
