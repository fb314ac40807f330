"""The fault rig: a served FraudScorer whose Redis sits behind a controllable proxy, under load.

``open_rig`` pins the service to CPU 0 and everything else (this process,
Redis, the proxy, the load) to CPU 1 when there are two CPUs, so the
service's timings are not the load generator's.  ``FAULTS`` are the faults
the drills inject, by name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.cli.demo import load_demo_data
from service.harness.fault_drill import Fault, LoadDriver
from service.harness.local_redis import LocalRedis
from service.harness.served import start_service, stop
from service.harness.tcp_proxy import TcpProxy
from service.harness.waiting import wait_until

__all__ = ["BREAKS_REQUESTS", "FAULTS", "Rig", "open_rig"]


@dataclass
class Rig:
    """The service, its proxy, its Redis, and load on it."""

    url: str
    proxy: TcpProxy
    redis: LocalRedis
    driver: LoadDriver
    data_dir: Path
    users: int


@contextmanager
def open_rig(
    bentoml_home: Path,
    work_dir: Path,
    *,
    users: int = 200,
    connections: int = 2,
    rate: float | None = 50.0,
    deadline_ms: float = 10.0,
    warm_up_requests: int = 200,
) -> Iterator[Rig]:
    """Start Redis, the proxy, the service and the load; stop them all on exit."""
    pinned = len(os.sched_getaffinity(0)) >= 2
    affinity = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {1})
    try:
        with LocalRedis() as redis_server, TcpProxy("127.0.0.1", redis_server.port) as proxy:
            data_dir = work_dir / "demo"
            load_demo_data(redis_server.url, users, data_dir)
            process, url, _ = start_service(
                bentoml_home,
                redis_server,
                work_dir,
                cpus="0" if pinned else None,
                REDIS_URL=proxy.redis_url,
                FEATSERVE_CACHE_TTL_S="0",
                FEATSERVE_FEATURE_DEADLINE_MS=str(deadline_ms),
                FEATSERVE_BREAKER_FAILURES="3",
                FEATSERVE_BREAKER_RESET_S="0.5",
            )
            ids = [f"u{i:06d}" for i in range(users)]
            driver = LoadDriver(url, ids, connections, rate).start()
            try:
                # Lazy first-use costs (connections, imports, metric files) are not the drill's.
                wait_until(lambda: len(driver.samples_since(0)) >= warm_up_requests, 60, 0.05)
                yield Rig(url, proxy, redis_server, driver, data_dir, users)
            finally:
                driver.stop()
                stop(process)
    finally:
        os.sched_setaffinity(0, affinity)


def _resets(proxy: TcpProxy) -> Fault:
    stop_resetting = threading.Event()

    def keep_resetting() -> None:
        while not stop_resetting.wait(0.1):
            proxy.reset_connections()

    thread = threading.Thread(target=keep_resetting, daemon=True)

    def clear() -> None:
        stop_resetting.set()
        thread.join()

    return Fault("connection resets every 100 ms", apply=thread.start, clear=clear)


def _kill_and_restart(rig: Rig) -> Fault:
    def restart() -> None:
        rig.redis.start()
        load_demo_data(rig.redis.url, rig.users, rig.data_dir)

    return Fault("redis-server killed, restarted and reloaded", rig.redis.kill, restart)


FAULTS: dict[str, Callable[[Rig], Fault]] = {
    "latency": lambda rig: Fault(
        "50 ms added latency",
        lambda: rig.proxy.set_latency(0.05),
        lambda: rig.proxy.set_latency(0.0),
    ),
    "blackhole": lambda rig: Fault(
        "blackhole", lambda: rig.proxy.blackhole(True), lambda: rig.proxy.blackhole(False)
    ),
    "resets": lambda rig: _resets(rig.proxy),
    "pause": lambda rig: Fault("redis-server paused (SIGSTOP)", rig.redis.pause, rig.redis.resume),
    "kill": _kill_and_restart,
}
"""Every fault the drills inject, by short name."""

BREAKS_REQUESTS = frozenset({"latency", "blackhole", "pause", "kill"})
"""Faults under which Redis reads fail (rather than merely reconnect), so the breaker opens."""
