"""An acknowledged push survives the server being killed: SIGKILL during a push stream.

A real ``bentoml serve`` with a SQLite backing store takes pushes from a few
producers at once; once some are acknowledged, every process of the server's
tree is killed with SIGKILL, in flight or not.  Every update acknowledged
with a 200 must then be in the backing store, with its value.
"""

from __future__ import annotations

import contextlib
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import psutil

from features.stores.base import ReadRequest
from features.stores.sqlite import SqliteStore
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.waiting import wait_until
from tests.e2e.conftest import start_service, stop

WRITE_TOKEN = "durability-test-write-token"

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
PRODUCERS = 4
ACKNOWLEDGED_BEFORE_KILL = 40


def test_every_acknowledged_push_is_in_the_backing_store_after_a_sigkill(
    bentoml_home: Path, tmp_path: Path
) -> None:
    backing_path = tmp_path / "backing.sqlite3"
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    killed = threading.Event()
    with LocalRedis() as redis_server:
        process, url, _ = start_service(
            bentoml_home,
            redis_server,
            tmp_path,
            FEATSERVE_BACKING_STORE=f"sqlite:{backing_path}",
            FEATSERVE_CACHE_TTL_S="0",
            FEATSERVE_WRITE_TOKEN=WRITE_TOKEN,
        )
        try:

            def produce(producer: int) -> None:
                writer = {"Authorization": f"Bearer {WRITE_TOKEN}"}
                with httpx.Client(base_url=url, timeout=5.0, headers=writer) as client:
                    for n in range(100_000):
                        if killed.is_set():
                            return
                        entity = f"k{producer}-{n}"
                        update = {
                            "entity_id": entity,
                            "event_timestamp": time.time(),
                            "values": {"tx_count_1h": n},
                        }
                        try:
                            response = client.post("/push", json={"updates": [update]})
                        except httpx.HTTPError:
                            return  # the server is gone: this one was never acknowledged
                        if response.status_code == 200 and response.json()["written"] == 1:
                            with lock:
                                acknowledged[entity] = n

            producers = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
            for thread in producers:
                thread.start()
            wait_until(lambda: len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL, timeout_s=60.0)
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
            for member in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
            killed.set()
            _, alive = psutil.wait_procs(tree, timeout=10)
            for thread in producers:
                thread.join(timeout=30)
        finally:
            stop(process)
    assert not alive
    assert not any(thread.is_alive() for thread in producers)
    with lock:
        expected = dict(acknowledged)
    assert len(expected) >= ACKNOWLEDGED_BEFORE_KILL
    with closing(SqliteStore(backing_path)) as backing:
        found = backing.read([ReadRequest(e, FEATURES, ("tx_count_1h",)) for e in expected])
    missing = [e for e, values in zip(expected, found, strict=True) if values is None]
    assert missing == []
    assert [values["tx_count_1h"] for values in found if values] == list(expected.values())
