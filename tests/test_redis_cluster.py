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

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from redis.crc import key_slot

from features.breaker import BreakerState, CircuitBreaker
from features.ingest.materialize import materialize
from features.ingest.rewarm import rewarm
from features.ingest.tables import open_table
from features.ingest.updates import parse_update
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver, Tier
from features.settings import Settings
from features.sources import Degraded, Source
from features.stores.base import FailedRead, ReadAnswer, ReadRequest, WriteOutcome
from features.stores.factory import async_online_store, open_online_store, open_redis_client
from features.stores.redis import RedisStore
from features.stores.redis_cluster import AsyncRedisClusterStore, async_cluster_client
from features.stores.redis_memory import MemoryReport
from features.stores.redis_scripts import HASH_WRITE
from features.stores.sqlite import SqliteStore
from service import cli
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from service.harness.waiting import wait_until
from tests.support.ranking import RANKING

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
RECENT = EXAMPLE_REGISTRY.group("user", "recent_items")
EMBEDDING = EXAMPLE_REGISTRY.group("user", "embedding")
NOW = int(time.time())
"""Writes are dated around now: Redis counts TTLs from the event time."""
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


def shard_of(cluster: LocalCluster, entity_id: str, entity: str = "user") -> LocalRedis:
    """The primary that serves ``entity_id``'s keys (the id's hash tag decides)."""
    return cluster.primary_for(f"{entity}:{{{entity_id}}}:features")


def stats(node: LocalRedis, command: str, kind: str = "calls") -> int:
    """How often ``node`` ran ``command`` (or, with ``kind="rejected_calls"``, redirected it)."""
    with closing(redis.Redis(port=node.port)) as client:
        entry = client.info("commandstats").get(f"cmdstat_{command}")
    return int(entry[kind]) if entry else 0


def reset_stats(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        with closing(redis.Redis(port=node.port)) as client:
            client.config_resetstat()


def as_dict(answer: ReadAnswer) -> dict[str, Any] | None:
    """An answer that must hold values (or nothing), as a dict."""
    assert not isinstance(answer, FailedRead), answer
    return dict(answer) if answer else None


def as_dicts(answers: Sequence[ReadAnswer]) -> list[Any]:
    return [as_dict(answer) for answer in answers]


def reasons(answers: Sequence[ReadAnswer]) -> list[str | None]:
    """Each answer's failure reason; ``None`` for an answer with values or nothing."""
    return [answer.reason if isinstance(answer, FailedRead) else None for answer in answers]


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
    # Each answer carries its event time, read by the same commands (HMGET ... _event_ms,
    # ZREVRANGE ... WITHSCORES); only the embedding adds one, the GET of its sibling key.
    assert {getattr(answer, "event_ms", None) for answer in answers} == {NOW * 1000, None}
    assert [getattr(answer, "event_ms", None) for answer in answers[:2]] == [NOW * 1000] * 2
    for node in cluster.nodes:
        assert proxies[node.port].round_trips == (1 if node.port in shards else 0), node.port
        assert stats(node, "hmget") == shards.get(node.port, 0)
        assert stats(node, "zrevrange") == shards.get(node.port, 0)
        assert stats(node, "get") == 2 * shards.get(node.port, 0)


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
        answer = answers[index]
        if shard_of(cluster, user) == down:
            assert isinstance(answer, FailedRead) and answer.reason == reason, (user, answer)
            assert answer.server_failed
        else:
            assert as_dict(answer) == wanted[index], user


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
                answers = await store.read(every_group(USERS[:1]))
                assert reasons(answers) == ["store_error"] * 3
            proxy.reset_counters()
            answers = await store.read(every_group(USERS[:1]))
            assert proxy.connections == 0
            return answers
        finally:
            proxy.refuse(False)
            await store.close()

    assert reasons(run(scenario)) == ["breaker_open"] * 3


def test_the_resolver_degrades_only_the_entities_of_a_node_that_is_down(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    """The node's entities fall back with the node's reason and are never cached; the
    others are served and cached; the Redis tier's breaker stays closed, while the node's
    own breaker opens and, once the node is back, its probe closes it."""
    write_users(settings, USERS)
    down = shard_of(cluster, USERS[0])
    held = {user for user in USERS if shard_of(cluster, user) == down}
    proxy = proxies[down.port]
    now = [0.0]
    tier_breaker = CircuitBreaker("redis", 2, 5.0, lambda: now[0])

    def by_source(batch: Any) -> list[tuple[str, Source, Degraded | None]]:
        [group] = batch.groups
        return list(zip(batch.entity_ids, group.sources, group.degraded, strict=True))

    async def scenario() -> list[list[tuple[str, Source, Degraded | None]]]:
        store = proxied_store(
            settings, proxies, breaker_failures=2, breaker_reset_s=5.0, clock=lambda: now[0]
        )
        cache: FeatureCache[CachedGroup] = FeatureCache(60.0, 1000)
        resolver = Resolver(
            EXAMPLE_REGISTRY, [Tier(Source.REDIS, store, tier_breaker)], cache, deadline_s=5.0
        )
        selection = resolver.selection("user", ["features"])
        try:
            await store.warm(1)
            proxy.refuse(True)
            proxy.reset_connections()
            rounds = [by_source(await resolver.resolve_batch(USERS, selection)) for _ in range(4)]
            assert tier_breaker.state is BreakerState.CLOSED
            proxy.refuse(False)
            now[0] += 6.0  # the node's breaker lets its probe through
            rounds.append(by_source(await resolver.resolve_batch(USERS, selection)))
            return rounds
        finally:
            proxy.refuse(False)
            await store.close()

    first, second, third, fourth, back = run(scenario)
    expected_reasons = {
        1: Degraded.STORE_ERROR,
        2: Degraded.STORE_ERROR,
        3: Degraded.BREAKER_OPEN,
        4: Degraded.BREAKER_OPEN,
    }
    for number, answers in enumerate((first, second, third, fourth), start=1):
        for user, source, degraded in answers:
            if user in held:
                assert (source, degraded) == (Source.UNAVAILABLE, expected_reasons[number]), user
            else:
                wanted = Source.REDIS if number == 1 else Source.CACHE
                assert (source, degraded) == (wanted, None), (number, user)
    assert {user: source for user, source, _ in back if user in held} == dict.fromkeys(
        held, Source.REDIS
    )


def test_warm_loads_the_slot_map_and_opens_connections_to_each_primary(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    write_users(settings, USERS)
    primaries = [proxies[node.port] for node in cluster.primaries()]

    async def scenario() -> tuple[int, list[int], list[int]]:
        store = proxied_store(settings, proxies)
        try:
            opened = await store.warm(3)
            # The proxies count a connection when their own loop accepts it.
            wait_until(lambda: all(proxy.connections >= 3 for proxy in primaries), 10, 0.01)
            before = [proxy.connections for proxy in primaries]
            assert as_dicts(await store.read(every_group(USERS))) == expected(USERS)
            return opened, before, [proxy.connections for proxy in primaries]
        finally:
            await store.close()

    opened, before, after = run(scenario)
    assert opened == 3 * len(primaries)
    assert before == after == [3] * len(primaries)  # the reads used the warm connections


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
    # One ASKING before each command: the embedding's blob and event-time GETs make four.
    assert stats(target, "asking") == (4 if redirect == "ASK" else 0)
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
        assert [outcome.applied for outcome in store.write(updates)] == [True] * 2345
        older = [parse_update(FEATURES, "w7", NOW - 60, {"tx_count_1h": 99})]
        newer = [parse_update(FEATURES, "w8", NOW + 60, {"tx_count_1h": 88})]
        outcomes = store.write(older + newer)
        assert [(o.landed, o.refused) for o in outcomes] == [
            (frozenset(), None),
            (frozenset({"tx_count_1h"}), None),
        ]
        answers = store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in ("w7", "w8")])
        assert as_dicts(answers) == [{"tx_count_1h": 7}, {"tx_count_1h": 88}]
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
        outcomes = store.write(updates)
        store.close()
    else:

        async def scenario() -> list[WriteOutcome]:
            writer = async_online_store(settings, for_writes=True)
            try:
                return await writer.write(updates)
            finally:
                await writer.close()

        outcomes = run(scenario)
    assert [outcome.landed for outcome in outcomes] == [frozenset({"tx_count_1h"})] * 50
    with closing(redis.Redis(port=forgetful.port)) as client:
        # Sent again as EVAL, which leaves the script in the node's cache.
        assert client.script_exists(HASH_WRITE.sha) == [True]
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
        assert all(answer is not None and not isinstance(answer, FailedRead) for answer in loaded)
        cluster.flush()
        with closing(SqliteStore(tmp_path / "backing.sqlite3")) as backing:
            written = [
                parse_update(FEATURES, u, int(time.time()), {"tx_count_1h": 5}) for u in users
            ]
            backing.write(written)
            report = rewarm(backing, store, [FEATURES])
        assert report.written == 60
        answers = store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in users])
        assert as_dicts(answers) == [{"tx_count_1h": 5}] * 60
    finally:
        store.close()


def test_materialize_writes_the_keys_of_a_moved_slot_through_redirects(
    cluster: LocalCluster, settings: Settings, tmp_path: Path
) -> None:
    """A client whose slot map is out of date (as after a slot migration) sends some keys to
    a node that does not serve them; those are written again, following redirects."""
    path = tmp_path / "features.parquet"
    rows = [
        {"entity_id": u, "event_timestamp": NOW - 5, "tx_count_1h": i} for i, u in enumerate(USERS)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    client = open_redis_client(settings, for_writes=True)
    assert isinstance(client, redis.RedisCluster)
    primaries = client.get_primaries()
    moved = [key_slot(f"user:{{{u}}}:features".encode()) for u in USERS[:10]]
    for slot in moved:
        owner = client.nodes_manager.slots_cache[slot][0]
        client.nodes_manager.slots_cache[slot] = [next(n for n in primaries if n != owner)]
    store = RedisStore(client, keys_per_call=16)
    try:
        report = materialize(open_table(path), FEATURES, store)
        answers = store.read([ReadRequest(u, FEATURES, ("tx_count_1h",)) for u in USERS])
        refreshed = [client.nodes_manager.slots_cache[slot][0].port for slot in moved]
    finally:
        store.close()
    assert (report.written, report.entity_groups_written, report.stopped) == (100, 100, None)
    assert as_dicts(answers) == [{"tx_count_1h": i} for i in range(100)]
    assert refreshed == [shard_of(cluster, u).port for u in USERS[:10]]


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


def test_memory_is_reported_for_each_primary_by_role_and_slots(
    cluster: LocalCluster, settings: Settings
) -> None:
    primaries = cluster.primaries()
    with redis.Redis(port=primaries[0].port) as first:
        first.config_set("maxmemory", 50_000_000)
    try:

        async def scenario() -> list[MemoryReport]:
            store = async_online_store(settings)
            try:
                return await store.memory()
            finally:
                await store.close()

        reports = run(scenario)
    finally:
        with redis.Redis(port=primaries[0].port) as first:
            first.config_set("maxmemory", 0)
    assert len(reports) == len(primaries)
    assert all(report.node.startswith("primary ") for report in reports)
    assert sorted(report.max_bytes for report in reports) == [0] * (len(primaries) - 1) + [
        50_000_000
    ]
    assert all(report.used_bytes > 0 for report in reports)


def test_a_ranking_request_reads_a_user_and_its_items_in_one_round_trip_per_primary(
    cluster: LocalCluster, settings: Settings, proxies: dict[int, TcpProxy]
) -> None:
    """A user and 60 candidate items, spread over the three primaries: each primary that
    holds one of their keys gets one round trip, and every group says where it came from."""
    profile = RANKING.registry.group("user", "profile")
    stats = RANKING.registry.group("item", "stats")
    items = [f"i{n:03d}" for n in range(60)]
    store = open_online_store(settings, for_writes=True)
    try:
        store.write(
            [parse_update(profile, "u1", NOW, {"clicks_30d": 3})]
            + [parse_update(stats, item, NOW, {"item_age_days": n}) for n, item in enumerate(items)]
        )
    finally:
        store.close()
    homes = Counter(shard_of(cluster, item).port for item in items)
    homes[shard_of(cluster, "u1").port] += 1
    assert len(homes) == 3

    async def scenario() -> list[Any]:
        read_store = proxied_store(settings, proxies)
        try:
            resolver = Resolver(
                RANKING.registry,
                [Tier(Source.REDIS, read_store, CircuitBreaker("redis", 3, 60.0))],
                FeatureCache(0, 0),
                deadline_s=2.0,
            )
            await read_store.read([ReadRequest("u1", profile, profile.feature_names)])
            for proxy in proxies.values():
                proxy.reset_counters()
            return await resolver.resolve_parts(
                [
                    (["u1"], resolver.selection("user")),
                    (items, resolver.selection("item")),
                ]
            )
        finally:
            await read_store.close()

    user, candidates = run(scenario)
    turns = {port: proxy.round_trips for port, proxy in proxies.items() if proxy.round_trips}
    assert turns == dict.fromkeys(homes, 1)
    assert user.groups[0].sources == (Source.REDIS,)
    assert user.groups[0].values[0][0] == 3
    [group] = candidates.groups
    assert set(group.sources) == {Source.REDIS}
    assert [values[3] for values in group.values] == list(range(60))
