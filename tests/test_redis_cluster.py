"""The cluster store against a real 3-primary / 3-replica Redis Cluster on loopback.

Round trips are counted by a TCP proxy in front of each node (the client reaches the
nodes through ``address_remap``), commands by each node's ``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.crc import key_slot

from features.ingest.rewarm import rewarm
from features.ingest.updates import parse_update
from features.registry import FRAUD_REGISTRY
from features.settings import Settings
from features.stores.base import ReadFailed, ReadRequest
from features.stores.factory import async_online_store, open_online_store
from features.stores.redis_cluster import AsyncRedisClusterStore, async_cluster_client
from features.stores.redis_scripts import SCRIPTS
from features.stores.sqlite import SqliteStore
from service import cli
from service.cli.demo import load_demo_data
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy

FEATURES = FRAUD_REGISTRY.group("user", "features")
RECENT = FRAUD_REGISTRY.group("user", "recent_items")
EMBEDDING = FRAUD_REGISTRY.group("user", "embedding")
NOW = 1764230400
USERS = [f"u{i:03d}" for i in range(100)]

T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def settings(cluster: LocalCluster) -> Settings:
    """Cluster settings with room to spare: a loaded CI machine must not fail a healthy read."""
    cluster.flush()
    return Settings(
        redis_url=cluster.url,
        redis_mode="cluster",
        redis_socket_timeout_ms=5000.0,
        redis_connect_timeout_ms=5000.0,
        feature_deadline_ms=2000.0,
    )


@pytest.fixture
def proxies(cluster: LocalCluster) -> Iterator[dict[int, TcpProxy]]:
    """A proxy in front of every node, by the node's port."""
    with ExitStack() as stack:
        yield {
            node.port: stack.enter_context(TcpProxy("127.0.0.1", node.port))
            for node in cluster.nodes
        }


def proxied_store(
    settings: Settings, proxies: dict[int, TcpProxy], **overrides: Any
) -> AsyncRedisClusterStore:
    """The read store as the factory builds it, reaching every node through its proxy."""

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return proxies[address[1]].address if address[1] in proxies else address

    options: dict[str, Any] = {
        "node_timeout_s": 1.0,
        "pool_size": 8,
        "breaker_failures": 3,
        "breaker_reset_s": 60.0,
        **overrides,
    }
    client = async_cluster_client(
        settings.redis_url or "",
        options["pool_size"],
        5.0,
        options.get("read_from_replicas", False),
        address_remap=remap,
    )
    return AsyncRedisClusterStore(client, 5.0, **options)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def every_group(users: list[str]) -> list[ReadRequest]:
    return [
        ReadRequest(user, group, group.feature_names)
        for user in users
        for group in (FEATURES, RECENT, EMBEDDING)
    ]


def write_users(settings: Settings, users: list[str]) -> None:
    store = open_online_store(settings, for_writes=True)
    try:
        store.write(
            [parse_update(FEATURES, u, NOW, {"tx_count_1h": i}) for i, u in enumerate(users)]
            + [parse_update(RECENT, u, NOW, {"recent_items": [f"i{u}"]}) for u in users]
        )
    finally:
        store.close()


def expected(users: list[str]) -> list[Any]:
    answers: list[Any] = []
    for i, user in enumerate(users):
        answers += [{"tx_count_1h": i}, {"recent_items": (f"i{user}",)}, None]
    return answers


def shard_of(cluster: LocalCluster, user: str) -> LocalRedis:
    return cluster.primary_for(f"user:{{{user}}}:features")


def stats(node: LocalRedis, command: str, kind: str = "calls") -> int:
    """How often ``node`` ran ``command`` (or, with ``kind="rejected_calls"``, redirected it)."""
    with closing(redis.Redis(port=node.port)) as client:
        entry = client.info("commandstats").get(f"cmdstat_{command}")
    return int(entry[kind]) if entry else 0


def reset_stats(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        with closing(redis.Redis(port=node.port)) as client:
            client.config_resetstat()


def as_dicts(answers: Sequence[Any]) -> list[Any]:
    return [dict(a) if a is not None and not isinstance(a, ReadFailed) else a for a in answers]


def test_a_read_of_100_entities_sends_one_round_trip_to_each_primary(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS)
    shards = Counter(shard_of(cluster, user).port for user in USERS)
    assert len(shards) == 3

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies)
        try:
            await store.read(every_group(USERS[:1]))  # the slot map and one connection
            reset_stats(cluster)
            for proxy in proxies.values():
                proxy.reset_counters()
            return await store.read(every_group(USERS))
        finally:
            await store.close()

    answers = run(scenario)
    assert as_dicts(answers) == expected(USERS)
    for node in cluster.nodes:
        assert proxies[node.port].round_trips == (1 if node.port in shards else 0), node.port
        assert stats(node, "hmget") == shards.get(node.port, 0)
        assert stats(node, "zrevrange") == shards.get(node.port, 0)


def test_one_entity_is_one_round_trip_to_its_node_only(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS[:1])

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies)
        try:
            await store.read(every_group(USERS[:1]))
            for proxy in proxies.values():
                proxy.reset_counters()
            return await store.read(every_group(USERS[:1]))
        finally:
            await store.close()

    assert as_dicts(run(scenario)) == expected(USERS[:1])
    home = shard_of(cluster, USERS[0]).port
    assert {port: p.round_trips for port, p in proxies.items() if p.round_trips} == {home: 1}


def test_the_store_starts_even_when_every_read_is_cut_short(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    """Loading the slot map takes two round trips; each read is given time for one."""
    write_users(settings, USERS[:1])
    for proxy in proxies.values():
        proxy.set_latency(0.010)

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies)
        try:
            for _ in range(100):
                try:
                    async with asyncio.timeout(0.015):
                        return await store.read(every_group(USERS[:1]))
                except TimeoutError:
                    continue
            return []
        finally:
            await store.close()

    assert as_dicts(run(scenario)) == expected(USERS[:1])


@pytest.mark.parametrize(
    ("fault", "reason"), [("refused", "store_error"), ("blackhole", "deadline")]
)
def test_a_node_that_fails_costs_only_its_own_entities(
    cluster: LocalCluster,
    settings: Settings,
    proxies: dict[int, TcpProxy],
    fault: str,
    reason: str,
) -> None:
    write_users(settings, USERS)
    down = shard_of(cluster, USERS[0])
    proxy = proxies[down.port]

    async def scenario() -> tuple[Sequence[Any], float]:
        store = proxied_store(settings, proxies, node_timeout_s=0.2)
        try:
            await store.read(every_group(USERS))
            if fault == "refused":
                proxy.refuse(True)
                proxy.reset_connections()
            else:
                proxy.blackhole(True)
            started = time.monotonic()
            answers = await store.read(every_group(USERS))
            return answers, time.monotonic() - started
        finally:
            proxy.refuse(False)
            proxy.blackhole(False)
            await store.close()

    answers, _ = run(scenario)
    wanted = expected(USERS)
    for index, user in enumerate(u for u in USERS for _ in range(3)):
        if shard_of(cluster, user) == down:
            assert answers[index] == ReadFailed(reason), user
        else:
            answers_index = answers[index]
            assert (dict(answers_index) if answers_index else None) == wanted[index], user


def test_a_failing_node_is_skipped_once_its_breaker_opens(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS[:1])
    proxy = proxies[shard_of(cluster, USERS[0]).port]

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies, breaker_failures=3)
        try:
            await store.read(every_group(USERS[:1]))
            proxy.refuse(True)
            proxy.reset_connections()
            for _ in range(3):
                assert await store.read(every_group(USERS[:1])) == [ReadFailed("store_error")] * 3
            proxy.reset_counters()
            answers = await store.read(every_group(USERS[:1]))
            assert proxy.connections == 0
            return answers
        finally:
            proxy.refuse(False)
            await store.close()

    assert run(scenario) == [ReadFailed("breaker_open")] * 3


def migrate(cluster: LocalCluster, user: str, finish: bool) -> tuple[LocalRedis, LocalRedis]:
    """Move ``user``'s slot (its keys) to another primary: all of it, or (not ``finish``) the
    keys only, leaving the slot migrating.  Returns (source, target)."""
    slot = key_slot(user.encode())
    source = shard_of(cluster, user)
    target = next(node for node in cluster.primaries() if node != source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    with (
        closing(redis.Redis(port=source.port)) as src,
        closing(redis.Redis(port=target.port)) as dst,
    ):
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        if finish:
            for node in cluster.primaries():
                with closing(redis.Redis(port=node.port)) as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    return source, target


def finish_migration(cluster: LocalCluster, user: str, target: LocalRedis) -> None:
    target_id = cluster.node_id(target)
    for node in cluster.primaries():
        with closing(redis.Redis(port=node.port)) as client:
            client.execute_command("CLUSTER SETSLOT", key_slot(user.encode()), "NODE", target_id)


@pytest.mark.parametrize("redirect", ["MOVED", "ASK"])
def test_a_redirected_read_is_sent_once_more_where_the_keys_are(
    cluster: LocalCluster, settings: Settings, redirect: str
) -> None:
    user = USERS[0]
    write_users(settings, [user])

    async def scenario() -> tuple[list[Any], LocalRedis, LocalRedis]:
        store = async_online_store(settings)
        try:
            await store.read(every_group([user]))  # the slot map, before the move
            source, target = migrate(cluster, user, finish=redirect == "MOVED")
            reset_stats(cluster)
            answers = await store.read(every_group([user]))
            if redirect == "ASK":
                finish_migration(cluster, user, target)
            return answers, source, target
        finally:
            await store.close()

    answers, source, target = run(scenario)
    assert as_dicts(answers) == expected([user])
    assert stats(target, "hmget") == 1
    assert stats(target, "asking") == (3 if redirect == "ASK" else 0)
    assert stats(source, "hmget", "rejected_calls") == 1  # the redirected attempt


def test_replica_reads_go_to_replicas_with_readonly(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS)
    for primary in cluster.primaries():
        with closing(redis.Redis(port=primary.port)) as client:
            assert client.execute_command("WAIT", 1, 5000) == 1

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies, read_from_replicas=True)
        try:
            reset_stats(cluster)
            return await store.read(every_group(USERS))
        finally:
            await store.close()

    assert as_dicts(run(scenario)) == expected(USERS)
    primaries = cluster.primaries()
    # A replica without READONLY would answer MOVED, and the retry would reach the primary.
    assert sum(stats(node, "hmget") for node in primaries) == 0
    assert sum(stats(node, "hmget") for node in cluster.nodes if node not in primaries) == 100
    assert all(stats(node, "readonly") > 0 for node in cluster.nodes if node not in primaries)


def test_a_replica_that_fails_is_replaced_by_its_primary(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS)
    replica = cluster.replicas_of(shard_of(cluster, USERS[0]))[0]
    proxy = proxies[replica.port]

    async def scenario() -> Sequence[Any]:
        store = proxied_store(settings, proxies, read_from_replicas=True)
        proxy.refuse(True)
        try:
            return await store.read(every_group(USERS))
        finally:
            proxy.refuse(False)
            await store.close()

    assert as_dicts(run(scenario)) == expected(USERS)


def test_writes_split_across_nodes_keep_order_and_accounting(
    cluster: LocalCluster, settings: Settings
) -> None:
    store = open_online_store(settings, for_writes=True)
    try:
        updates = [parse_update(FEATURES, f"w{i}", NOW, {"tx_count_1h": i}) for i in range(2345)]
        assert store.write(updates) == [True] * 2345
        older = [parse_update(FEATURES, "w7", NOW - 60, {"tx_count_1h": 99})]
        newer = [parse_update(FEATURES, "w8", NOW + 60, {"tx_count_1h": 88})]
        assert store.write(older + newer) == [False, True]
        answers = store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in ("w7", "w8")])
        assert [dict(a) if a else None for a in answers] == [
            {"tx_count_1h": 7},
            {"tx_count_1h": 88},
        ]
    finally:
        store.close()
    keys = 0
    for primary in cluster.primaries():
        with closing(redis.Redis(port=primary.port)) as client:
            keys += client.dbsize()
    assert keys == 2345


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_node_that_lost_its_scripts_gets_them_again(
    cluster: LocalCluster, settings: Settings, kind: str
) -> None:
    write_users(settings, USERS[:1])  # every primary has the scripts now
    forgetful = shard_of(cluster, "s1")
    with closing(redis.Redis(port=forgetful.port)) as client:
        client.script_flush()
    updates = [parse_update(FEATURES, f"s{i}", NOW, {"tx_count_1h": i}) for i in range(50)]
    if kind == "blocking":
        store = open_online_store(settings, for_writes=True)
        assert store.write(updates) == [True] * 50
        store.close()
    else:

        async def scenario() -> list[bool]:
            writer = async_online_store(settings, for_writes=True)
            try:
                return await writer.write(updates)
            finally:
                await writer.close()

        assert run(scenario) == [True] * 50
    with closing(redis.Redis(port=forgetful.port)) as client:
        assert client.script_exists(*(script.sha for script in SCRIPTS)) == [True] * len(SCRIPTS)
        assert client.hget("user:{s1}:features", "tx_count_1h") == b"1"


def test_materialize_and_rewarm_write_into_the_cluster(
    cluster: LocalCluster, settings: Settings, tmp_path: Path
) -> None:
    load_demo_data(None, 60, tmp_path / "demo", settings)
    users = [f"u{i:06d}" for i in range(60)]
    assert len({shard_of(cluster, user) for user in users}) == 3
    store = open_online_store(settings)
    try:
        loaded = store.read(every_group(users))
        assert all(answer is not None for answer in loaded)
        cluster.flush()
        with closing(SqliteStore(tmp_path / "backing.sqlite3")) as backing:
            written = [
                parse_update(FEATURES, u, int(time.time()), {"tx_count_1h": 5}) for u in users
            ]
            backing.write(written)
            report = rewarm(backing, store, [FEATURES])
        assert report.written == 60
        answers = store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in users])
        assert [dict(a) if a else None for a in answers] == [{"tx_count_1h": 5}] * 60
    finally:
        store.close()


def test_capacity_measures_entities_on_the_cluster(
    cluster: LocalCluster, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    write_users(settings, USERS)
    argv = ["capacity", "--entities", "100", "--peak-rps", "10", "--latency-ms", "1",
            "--measure", "--samples", "20", "--json"]  # fmt: skip
    assert cli.main(argv, settings) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["entity_bytes_source"] == "measured: MEMORY USAGE of 20 entities"
    assert printed["inputs"]["entity_bytes"] > 0
