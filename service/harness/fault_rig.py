"""The fault rig: a served ScoringService whose Redis sits behind a controllable proxy, under load.

``open_rig`` writes each entity's feature values (``drill_values``, chosen
here, not by featserve) to a CSV table, loads it with ``featserve
materialize`` into Redis (and first into a SQLite backing store, with
``backing``), serves the ScoringService against Redis through a proxy in a
process of its own, reads every entity once, so that each has been read
before any fault and its score from Redis is known, then starts the load.

The service's Redis socket timeout is long (``SOCKET_TIMEOUT_MS``): only the
feature deadline can end a wait on a sick Redis, so a read the deadline
failed to cut shows as a feature stage of seconds, not of 50 ms.  The proxy
and Redis run under real-time scheduling where that is allowed
(``service.harness.realtime``), so a busy machine does not slow the healthy
path the drills compare with.  With two CPUs the service is pinned to CPU 0
and everything else (this process, Redis, the proxy, the load) to CPU 1.

``FAULTS`` are the Redis faults the drills inject, by name;
``backing_lock`` makes the SQLite backing store fail too.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from features.sources import Source
from service import cli
from service.harness.fault_drill import Fault, Load
from service.harness.local_redis import LocalRedis
from service.harness.proxy_process import ProxyProcess
from service.harness.served import start_service, stop
from service.harness.waiting import wait_until

__all__ = [
    "BREAKS_REQUESTS",
    "FAULTS",
    "REQUEST_TIMESTAMP",
    "SOCKET_TIMEOUT_MS",
    "Rig",
    "backing_lock",
    "drill_request",
    "drill_values",
    "open_rig",
]

SOCKET_TIMEOUT_MS = 2000.0
"""The service's Redis socket timeout in the rig: far beyond any deadline (see the module)."""

REQUEST_TIMESTAMP = 1764423723
"""Every drill request's ``timestamp`` (a Saturday, 13:42 UTC): its score depends on nothing
else but the entity's values and amount."""

WARM_UP_TIMEOUT_S = 60.0


def drill_values(users: int) -> dict[str, dict[str, int | float]]:
    """The ``user:features`` values of entities ``d000000``... that the rig writes: varied,
    within every feature's range, and far from the training defaults."""
    return {
        f"d{i:06d}": {
            "tx_count_1h": 1 + i % 7,
            "tx_sum_1h": 37.5 * (1 + i % 11),
            "tx_count_24h": 2 + i % 23,
            "tx_sum_24h": 120.25 * (1 + i % 13),
            "account_age_days": 3 + (i * 37) % 900,
            "avg_tx_90d": 15.5 + 4.25 * (i % 29),
            "distinct_merchants_7d": 1 + i % 9,
            "credit_score_bucket": i % 5,
            "is_premium": i % 2,
            "last_login_ts": REQUEST_TIMESTAMP - 600 * (1 + i % 48),
        }
        for i in range(users)
    }


def drill_request(entity_id: str) -> dict[str, Any]:
    """The one request the load sends for ``entity_id``."""
    amount = 12.0 + 9.5 * (int(entity_id[1:]) % 61)
    return {"entity_id": entity_id, "amount": amount, "timestamp": REQUEST_TIMESTAMP}


@dataclass
class Rig:
    """The service, its proxy, its Redis, its backing store, and load on it."""

    url: str
    proxy: ProxyProcess
    redis: LocalRedis
    load: Load
    values: dict[str, dict[str, int | float]]
    """What the rig wrote, by entity."""
    scores: dict[str, float]
    """Each entity's score when the rig first read it, from Redis."""
    backing_path: Path | None
    cache_ttl_s: float
    deadline_ms: float


@contextmanager
def open_rig(
    bentoml_home: Path,
    work_dir: Path,
    *,
    users: int = 200,
    connections: int = 2,
    rate: float = 100.0,
    deadline_ms: float = 10.0,
    cache_ttl_s: float = 0.0,
    backing: bool = False,
) -> Iterator[Rig]:
    """Start Redis, the proxy, the service and the load; stop them all on exit.

    ``rate`` is requests per second over all ``connections``; ``cache_ttl_s`` 0 turns
    the cache off, so every request asks the tiers; ``backing`` adds a SQLite store.
    """
    pinned = len(os.sched_getaffinity(0)) >= 2
    affinity = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {1})
    values = drill_values(users)
    backing_path = work_dir / "backing.sqlite3" if backing else None
    try:
        with (
            LocalRedis(realtime=True) as redis_server,
            ProxyProcess("127.0.0.1", redis_server.port, realtime=True) as proxy,
        ):
            _materialize(values, work_dir / "drill_features.csv", redis_server.url, backing_path)
            settings = {
                "REDIS_URL": proxy.redis_url,
                "FEATSERVE_CACHE_TTL_S": str(cache_ttl_s),
                "FEATSERVE_FEATURE_DEADLINE_MS": str(deadline_ms),
                "FEATSERVE_REDIS_SOCKET_TIMEOUT_MS": str(SOCKET_TIMEOUT_MS),
                "FEATSERVE_BREAKER_FAILURES": "3",
                "FEATSERVE_BREAKER_RESET_S": "0.5",
            }
            if backing_path is not None:
                settings["FEATSERVE_BACKING_STORE"] = f"sqlite:{backing_path}"
            process, url, _ = start_service(
                bentoml_home, redis_server, work_dir, cpus="0" if pinned else None, **settings
            )
            try:
                scores = _read_every_entity(url, list(values))
                bodies = [json.dumps(drill_request(e)).encode() for e in values]
                load = Load(url, bodies, rate, connections).start()
                try:
                    # Lazy first-use costs (imports, metric files) are not the drills'.
                    wait_until(lambda: len(load.answers()) >= rate, WARM_UP_TIMEOUT_S, 0.05)
                    yield Rig(
                        url,
                        proxy,
                        redis_server,
                        load,
                        values,
                        scores,
                        backing_path,
                        cache_ttl_s,
                        deadline_ms,
                    )
                finally:
                    load.stop()
            finally:
                stop(process)
    finally:
        os.sched_setaffinity(0, affinity)


def _materialize(
    values: Mapping[str, Mapping[str, int | float]],
    table: Path,
    redis_url: str,
    backing_path: Path | None,
) -> None:
    """Write ``values`` as a CSV table, dated a minute ago in ISO 8601, and materialize it."""
    event_time = datetime.fromtimestamp(int(time.time()) - 60, UTC).isoformat()
    names = list(next(iter(values.values())))
    with table.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["entity_id", "event_timestamp", *names])
        for entity_id, row in values.items():
            writer.writerow([entity_id, event_time, *(row[name] for name in names)])
    args = ["materialize", str(table), "--group", "user:features", "--redis-url", redis_url]
    if backing_path is not None:
        args += ["--backing", f"sqlite:{backing_path}"]
    code = cli.main(args)
    if code != 0:
        raise RuntimeError(f"featserve materialize of the drill's table exited with {code}")


def _read_every_entity(url: str, entity_ids: list[str]) -> dict[str, float]:
    """Score each entity until Redis answered it; each one's score from Redis."""
    scores: dict[str, float] = {}
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while len(scores) < len(entity_ids):
            if time.monotonic() > deadline:
                unread = len(entity_ids) - len(scores)
                raise RuntimeError(f"{unread} entities were never answered from Redis")
            for entity_id in entity_ids:
                if entity_id not in scores:
                    answer = client.post("/score", json=drill_request(entity_id)).json()
                    if answer["sources"] == {"features": Source.REDIS}:
                        scores[entity_id] = answer["score"]
    return scores


@contextmanager
def _held_read_locks(database: Path) -> Iterator[None]:
    """Hold every WAL read lock of a SQLite database from this process.

    A connection in WAL mode reads under one of five read locks, bytes 123 to
    127 of the ``-shm`` file (https://www.sqlite.org/walformat.html), taken
    with ``fcntl``.  While another process holds all five, no read of the
    database can start: SQLite retries for its busy timeout, then fails, as
    when a crashed or stuck process keeps the database locked.
    """
    shm = os.open(f"{database}-shm", os.O_RDWR)
    try:
        # A read in progress holds one of them: wait for it to end (reads take microseconds).
        wait_until(lambda: _try_lock(shm), timeout_s=5.0, poll_s=0.001)
        try:
            yield
        finally:
            fcntl.lockf(shm, fcntl.LOCK_UN, 5, 123)
    finally:
        os.close(shm)


def _try_lock(shm: int) -> bool:
    try:
        fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123)
    except OSError:
        return False
    return True


def backing_lock(rig: Rig) -> Fault:
    """The backing store fails: its SQLite database stays locked by another process."""
    if rig.backing_path is None:
        raise ValueError("the rig has no backing store")
    path = rig.backing_path
    held = ExitStack()
    return Fault(
        "SQLite locked by another process",
        lambda: held.enter_context(_held_read_locks(path)),
        held.close,
    )


RESET_INTERVAL_S = 0.02
"""How often the resets fault resets every connection. redis-py 8.2's pool reconnects a
connection reset while idle before using it, so only a reset that meets a read in flight
shows; at this rate about one read in twenty does (every 100 ms, the drill's first rate,
some runs met none)."""


def _resets(proxy: ProxyProcess) -> Fault:
    stop_resetting = threading.Event()

    def keep_resetting() -> None:
        while not stop_resetting.wait(RESET_INTERVAL_S):
            proxy.reset_connections()

    thread = threading.Thread(target=keep_resetting, daemon=True)

    def clear() -> None:
        stop_resetting.set()
        thread.join()

    return Fault(
        f"connection resets every {RESET_INTERVAL_S * 1000:g} ms", apply=thread.start, clear=clear
    )


def _kill_and_restart(rig: Rig) -> Fault:
    def kill() -> None:
        # What a restarted server loads: a snapshot, as Redis with persistence keeps one.
        with redis.Redis.from_url(rig.redis.url) as client:
            client.save()
        rig.redis.kill()

    def restart() -> None:
        rig.redis.start()

    return Fault("redis-server killed, restarted from its snapshot", kill, restart)


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
"""Every Redis fault the drills inject, by short name."""

BREAKS_REQUESTS = frozenset({"latency", "blackhole", "pause", "kill"})
"""Faults under which Redis reads fail (rather than merely reconnect), so the breaker opens."""
