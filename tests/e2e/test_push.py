"""`POST /push` over HTTP: validation, ordering, and agreement with `featserve materialize`."""

from __future__ import annotations

import csv
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.cli import main
from service.harness.local_redis import LocalRedis
from service.harness.waiting import wait_until
from tests.e2e.conftest import PATIENT, RunningService, start_service, stop

NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
ROWS = [
    {"entity_id": f"p{i}", "event_timestamp": NOW - i, "tx_count_1h": i, "avg_tx_90d": 10.5 * i}
    for i in range(10)
]


def push(service: RunningService, updates: list[dict[str, Any]]) -> Any:
    return service.client.post("/push", json={"updates": updates})


def as_push(row: dict[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in row.items() if k not in ("entity_id", "event_timestamp")}
    return {
        "entity_id": row["entity_id"],
        "event_timestamp": row["event_timestamp"],
        "values": values,
    }


def contents(url: str, keys: list[str]) -> dict[str, Any]:
    with redis.Redis.from_url(url) as client:
        return {key: client.hgetall(key) for key in keys}


def test_push_and_materialize_write_the_same_state(
    service: RunningService, own_redis: LocalRedis, tmp_path: Path
) -> None:
    response = push(service, [as_push(row) for row in ROWS])
    assert response.status_code == 200, response.text
    assert response.json() == {"written": 10, "stale": [], "expired": []}

    table = tmp_path / "rows.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    assert main(["materialize", str(table), "--redis-url", own_redis.url]) == 0

    keys = [f"user:{{p{i}}}:features" for i in range(10)]
    pushed = contents(service.redis.url, keys)
    assert pushed == contents(own_redis.url, keys)
    assert pushed["user:{p3}:features"][b"avg_tx_90d"] == b"31.5"


def test_an_older_push_is_reported_stale_and_changes_nothing(service: RunningService) -> None:
    push(service, [as_push({"entity_id": "s1", "event_timestamp": NOW, "tx_count_1h": 4})])
    response = push(
        service,
        [
            as_push({"entity_id": "s1", "event_timestamp": NOW - 60, "tx_count_1h": 1}),
            as_push({"entity_id": "s2", "event_timestamp": NOW, "tx_count_1h": 2}),
        ],
    )
    assert response.json() == {"written": 1, "stale": [0], "expired": []}
    features = service.client.post("/features", json={"entity_ids": ["s1"]}).json()
    assert features["entities"][0]["groups"]["features"]["values"]["tx_count_1h"] == 4


def test_push_writes_sorted_sets_and_embeddings(service: RunningService) -> None:
    response = push(
        service,
        [
            {
                "entity_id": "e1",
                "group": "recent_items",
                "event_timestamp": NOW,
                "values": {"recent_items": ["i1", "i2"]},
            },
            {
                "entity_id": "e1",
                "group": "embedding",
                "event_timestamp": NOW,
                "values": {"embedding": [0.5] * 16},
            },
        ],
    )
    assert response.status_code == 200, response.text
    groups = service.client.post("/features", json={"entity_ids": ["e1"]}).json()["entities"][0][
        "groups"
    ]
    assert sorted(groups["recent_items"]["values"]["recent_items"]) == ["i1", "i2"]
    assert groups["embedding"]["values"]["embedding"] == [0.5] * 16


def test_one_bad_update_refuses_the_whole_push(service: RunningService) -> None:
    response = push(
        service,
        [
            as_push({"entity_id": "ok1", "event_timestamp": NOW, "tx_count_1h": 1}),
            as_push({"entity_id": "ok2", "event_timestamp": NOW, "tx_count_1h": -1}),
            {"entity_id": "ok3", "group": "risk", "event_timestamp": NOW, "values": {"x": 1}},
            {
                "entity_id": "ok4",
                "group": "embedding",
                "event_timestamp": NOW,
                "values": {"embedding": [1.0]},
            },
        ],
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "3 of 4 updates refused; nothing was written"
    assert [(r["index"], r["entity_id"], r["field"]) for r in body["refused"]] == [
        (1, "ok2", "tx_count_1h"),
        (2, "ok3", "group"),
        (3, "ok4", "embedding"),
    ]
    assert "tx_count_1h: -1 is below the minimum 0" in body["refused"][0]["error"]
    assert "unknown feature group user:risk" in body["refused"][1]["error"]
    assert "expected 16 values" in body["refused"][2]["error"]
    with redis.Redis.from_url(service.redis.url) as client:
        assert client.exists("user:{ok1}:features") == 0


def test_a_malformed_push_body_is_a_400(service: RunningService) -> None:
    response = service.client.post(
        "/push", json={"updates": [{"entity_id": "x", "event_timestamp": "now", "values": {}}]}
    )
    assert response.status_code == 400
    assert "updates.0.event_timestamp" in response.json()["error"]


def test_a_push_dated_ahead_is_refused_naming_the_index_and_field(service: RunningService) -> None:
    now = int(time.time())
    response = push(
        service,
        [
            as_push({"entity_id": "f1", "event_timestamp": now, "tx_count_1h": 1}),
            as_push({"entity_id": "f2", "event_timestamp": now + 86400, "tx_count_1h": 1}),
        ],
    )
    assert response.status_code == 422
    [refused] = response.json()["refused"]
    assert (refused["index"], refused["field"]) == (1, "event_timestamp")
    assert "ahead of now" in refused["error"]
    with redis.Redis.from_url(service.redis.url) as client:
        assert client.exists("user:{f1}:features", "user:{f2}:features") == 0


def test_updates_past_their_ttl_are_reported_expired_and_not_written(
    service: RunningService,
) -> None:
    now = int(time.time())
    response = push(
        service,
        [
            as_push({"entity_id": "x1", "event_timestamp": now - 3 * 3600, "tx_count_1h": 1}),
            as_push({"entity_id": "x2", "event_timestamp": now - 5400, "tx_count_1h": 2}),
        ],
    )
    assert response.json() == {"written": 1, "stale": [], "expired": [0]}
    with redis.Redis.from_url(service.redis.url) as client:
        assert client.exists("user:{x1}:features") == 0
        assert 1740_000 < client.pttl("user:{x2}:features") <= 1800_000


def test_a_key_redis_cannot_merge_into_is_a_422_and_the_rest_is_written(
    service: RunningService,
) -> None:
    with redis.Redis.from_url(service.redis.url) as client:
        client.set("user:{clash}:features", "not a hash")
    response = push(
        service,
        [
            as_push({"entity_id": "clash", "event_timestamp": NOW, "tx_count_1h": 1}),
            as_push({"entity_id": "fine", "event_timestamp": NOW, "tx_count_1h": 2}),
        ],
    )
    assert response.status_code == 422
    body = response.json()
    assert "retrying cannot help" in body["error"]
    assert [(r["index"], r["field"]) for r in body["refused"]] == [(0, "store")]
    assert "WRONGTYPE" in body["refused"][0]["error"]
    assert (body["written"], body["stale"], body["expired"]) == (1, [], [])


def test_a_push_while_redis_is_down_is_a_503_safe_to_retry(backed: Backed) -> None:
    # Its own service: stopping Redis loses what the shared one holds for the other tests.
    service = backed.service
    update = as_push({"entity_id": "later", "event_timestamp": NOW, "tx_count_1h": 3})
    service.redis.stop()
    try:
        response = push(service, [update])
    finally:
        service.redis.start()
    assert response.status_code == 503
    assert "retrying is safe" in response.json()["error"]
    answers: list[Any] = []

    def retried() -> bool:
        answers.append(push(service, [update]))
        return bool(answers[-1].status_code == 200)

    wait_until(retried)
    assert answers[-1].json() == {"written": 1, "stale": [], "expired": []}


@pytest.fixture(scope="module")
def backed(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    """A service with a SQLite backing store and a cache that outlives every test here."""
    work = tmp_path_factory.mktemp("backed")
    sqlite_path = work / "backing.sqlite3"
    token = secrets.token_urlsafe(24)
    with LocalRedis() as redis_server:
        process, url, log_path = start_service(
            bentoml_home,
            redis_server,
            work,
            FEATSERVE_BACKING_STORE=f"sqlite:{sqlite_path}",
            FEATSERVE_CACHE_TTL_S="600",
            FEATSERVE_WRITE_TOKEN=token,
            **PATIENT,
        )
        headers = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
                yield Backed(
                    RunningService(url, redis_server, client, log_path, token), sqlite_path
                )
        finally:
            stop(process)


@dataclass
class Backed:
    """A served ScoringService with a backing store, and where that store keeps its file."""

    service: RunningService
    sqlite_path: Path


def in_sqlite(path: Path, entity_id: str) -> dict[str, Any] | None:
    """An entity's ``features`` values in the SQLite file, read with plain sqlite3."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT vals FROM feature_groups WHERE key = ?", (f"user:{{{entity_id}}}:features",)
        ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def test_a_push_redis_fails_after_the_backing_store_took_it_is_a_503_safe_to_resend(
    backed: Backed,
) -> None:
    service = backed.service
    older = as_push({"entity_id": "half", "event_timestamp": NOW - 30, "tx_count_1h": 1,
                     "avg_tx_90d": 4.5})  # fmt: skip
    newer = as_push({"entity_id": "half", "event_timestamp": NOW, "tx_count_1h": 2})
    service.redis.stop()
    try:
        failed = push(service, [older])
    finally:
        service.redis.start()
    assert failed.status_code == 503, failed.text
    assert "retrying is safe" in failed.json()["error"]
    # Half-way: the backing store took it, Redis never did.
    assert in_sqlite(backed.sqlite_path, "half") == {"tx_count_1h": 1, "avg_tx_90d": 4.5}
    assert contents(service.redis.url, ["user:{half}:features"]) == {"user:{half}:features": {}}
    # A newer value lands meanwhile; sending the failed push again adds what it alone holds.
    assert push(service, [newer]).json() == {"written": 1, "stale": [], "expired": []}
    assert push(service, [older]).json() == {"written": 1, "stale": [], "expired": []}
    held = contents(service.redis.url, ["user:{half}:features"])["user:{half}:features"]
    assert (held[b"tx_count_1h"], held[b"avg_tx_90d"]) == (b"2", b"4.5")
    assert in_sqlite(backed.sqlite_path, "half") == {"tx_count_1h": 2, "avg_tx_90d": 4.5}


def test_the_pushing_worker_drops_its_cached_copy(backed: Backed) -> None:
    service = backed.service

    def features_of(entity_id: str) -> dict[str, Any]:
        answer = service.client.post(
            "/features", json={"entity_ids": [entity_id], "groups": ["features"]}
        )
        group: dict[str, Any] = answer.json()["entities"][0]["groups"]["features"]
        return group

    first = as_push({"entity_id": "cached", "event_timestamp": NOW - 5, "tx_count_1h": 5})
    assert push(service, [first]).status_code == 200
    assert features_of("cached")["source"] == "redis"
    assert features_of("cached")["source"] == "cache"  # the cache lives 10 minutes here
    second = as_push({"entity_id": "cached", "event_timestamp": NOW, "tx_count_1h": 6})
    assert push(service, [second]).status_code == 200
    after = features_of("cached")
    assert (after["source"], after["values"]["tx_count_1h"]) == ("redis", 6)
