"""The resolver against one Redis node and against a 3-primary cluster, in the same run.

Usage: ``python -m bench.cluster_bench [--quick]`` (starts its own Redis and its own
3-primary / 3-replica cluster on loopback, both holding the demo features of 1,000 users)

For 1 and 100 entities of the ``user:features`` group (what the model reads),
each call awaited back to back on one uvloop event loop, the paths taken in
turn, round after round, so that a busy machine slows them alike:

- one node: a redis-py ``pipeline(transaction=False)`` of N ``HMGET`` (the
  floor), featserve's store read (``AsyncRedisStore``), the resolver with its
  cache off;
- cluster: redis-py's asyncio ``RedisCluster.pipeline()`` of N ``HMGET`` (it
  groups by node and gathers), featserve's cluster store read
  (``AsyncRedisClusterStore``: one packed round trip per node, all at once),
  the resolver over it with its cache off.

What a cluster costs per request is the cluster rows over the one-node rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis.asyncio
import uvloop
from redis.crc import key_slot

from bench.report import Section, Stats, machine_lines, markdown_table, ratio
from features.keys import feature_key
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.stores.base import ReadRequest
from features.stores.factory import async_online_store
from features.stores.redis import AsyncRedisStore
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT

SIZES = (1, 100)
USERS = 1000
ROUNDS = 10
USER_FEATURES = EXAMPLE_REGISTRY.group("user", "features")
FIELDS = USER_FEATURES.feature_names
DEADLINE_S = 1.0
"""Generous: a shared CPU must not turn a slow call into a fallback that is timed as fast."""


@dataclass(frozen=True)
class Case:
    """One measured path: where, how many entities, which path, its statistics."""

    setup: str
    entities: int
    path: str
    stats: Stats


@contextlib.asynccontextmanager
async def resolver_over(settings: Settings) -> AsyncIterator[tuple[Resolver, AsyncRedisStore]]:
    """A resolver as the service builds it, cache off, and its store."""
    store = async_online_store(settings)
    cache: FeatureCache[CachedGroup] = FeatureCache(0.0, 0, 0)
    try:
        yield Resolver(EXAMPLE_REGISTRY, [redis_tier(store, settings)], cache, DEADLINE_S), store
    finally:
        await store.close()


async def measure(one_url: str, cluster_url: str, iterations: int) -> list[Case]:
    """Every (setup, size, path), ``iterations`` calls each over ``ROUNDS`` interleaved rounds."""
    one = Settings(
        redis_url=one_url,
        redis_socket_timeout_ms=DEADLINE_S * 1000,
        feature_deadline_ms=DEADLINE_S * 1000,
    )
    cluster = one.model_copy(update={"redis_url": cluster_url, "redis_mode": "cluster"})
    plain = redis.asyncio.Redis.from_url(one_url)
    clustered = redis.asyncio.RedisCluster.from_url(cluster_url)
    paths: dict[tuple[str, int, str], Callable[[], Awaitable[object]]] = {}
    try:
        async with (
            resolver_over(one) as (one_resolver, one_store),
            resolver_over(cluster) as (
                cluster_resolver,
                cluster_store,
            ),
        ):
            selection = one_resolver.selection("user", ["features"])
            for size in SIZES:
                ids = [f"u{i:06d}" for i in range(size)]
                keys = [feature_key("user", entity_id, "features") for entity_id in ids]
                requests = [ReadRequest(entity_id, USER_FEATURES, FIELDS) for entity_id in ids]
                paths[("one node", size, "redis-py pipeline")] = partial(_pipeline, plain, keys)
                paths[("one node", size, "store read")] = partial(one_store.read, requests)
                paths[("one node", size, "resolver, cache miss")] = partial(
                    one_resolver.resolve, ids, selection
                )
                paths[("cluster", size, "redis-py ClusterPipeline")] = partial(
                    _pipeline, clustered, keys
                )
                paths[("cluster", size, "store read")] = partial(cluster_store.read, requests)
                paths[("cluster", size, "resolver, cache miss")] = partial(
                    cluster_resolver.resolve, ids, selection
                )
            for operation in paths.values():
                for _ in range(max(20, iterations // 10)):  # warm-up: connections, slot map
                    await operation()
            latencies: dict[tuple[str, int, str], list[float]] = {key: [] for key in paths}
            walls = dict.fromkeys(paths, 0.0)
            per_round = max(1, iterations // ROUNDS)
            for _ in range(ROUNDS):
                for key, operation in paths.items():
                    started = time.perf_counter()
                    for _ in range(per_round):
                        begin = time.perf_counter()
                        await operation()
                        latencies[key].append(time.perf_counter() - begin)
                    walls[key] += time.perf_counter() - started
    finally:
        await plain.aclose()
        await clustered.aclose()
    return [
        Case(
            setup, size, path, Stats.of(latencies[(setup, size, path)], walls[(setup, size, path)])
        )
        for (setup, size, path) in paths
    ]


async def _pipeline(
    client: redis.asyncio.Redis | redis.asyncio.RedisCluster, keys: list[str]
) -> object:
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, FIELDS)
        return await pipe.execute()


def _nodes_touched(cluster: LocalCluster, size: int) -> int:
    return len({cluster.serving(key_slot(f"u{i:06d}".encode()))[0].port for i in range(size)})


def section(cases: list[Case], nodes_touched: dict[int, int]) -> Section:
    """The report: each path's figures, the cluster's cost over one node."""
    by = {(c.setup, c.entities, c.path): c.stats for c in cases}
    rows = [[c.setup, str(c.entities), c.path, *c.stats.cells()] for c in cases]
    table = markdown_table(["setup", "entities", "path", *Stats.HEADER], rows, left=3)
    cost_rows = []
    for size in SIZES:
        for ours, theirs in (
            ("store read", "store read"),
            ("resolver, cache miss", "resolver, cache miss"),
            ("redis-py ClusterPipeline", "redis-py pipeline"),
        ):
            cluster, one = by[("cluster", size, ours)], by[("one node", size, theirs)]
            cost_rows.append(
                [
                    str(size),
                    ours,
                    str(nodes_touched[size]),
                    f"{(cluster.p50_ms - one.p50_ms) * 1000:+.0f} us",
                    ratio(cluster.p50_ms, one.p50_ms),
                    ratio(cluster.p99_ms, one.p99_ms),
                ]
            )
    cost = markdown_table(
        ["entities", "path", "nodes asked", "p50 cost", "p50 cluster / one node", "p99 ratio"],
        cost_rows,
        left=2,
    )
    return Section(
        "Resolver against one node and a 3-primary cluster",
        "Same run, same machine: one Redis node, and a cluster of 3 primaries and 3 replicas "
        "(`service/harness/local_cluster.py`), both on loopback holding the demo features of "
        f"{USERS:,} users; every path is timed in {ROUNDS} interleaved rounds on one uvloop "
        "loop. The resolver reads `user:features` with its cache off. `redis-py "
        "ClusterPipeline` is the library's own cluster pipeline, for comparison.",
        [table, cost],
    )


def collect(quick: bool) -> tuple[list[Case], dict[int, int]]:
    """Start both setups with demo data and measure every case."""
    with (
        LocalRedis() as one,
        LocalCluster() as cluster,
        tempfile.TemporaryDirectory(prefix="featserve-bench-") as tmp,
    ):
        with contextlib.redirect_stderr(io.StringIO()):
            load_demo_data(one.url, USERS, Path(tmp) / "one", project=EXAMPLE_PROJECT)
            settings = Settings(redis_url=cluster.url, redis_mode="cluster")
            load_demo_data(None, USERS, Path(tmp) / "cluster", settings, project=EXAMPLE_PROJECT)
        touched = {size: _nodes_touched(cluster, size) for size in SIZES}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            cases = runner.run(measure(one.url, cluster.url, 1000 if quick else 10_000))
    return cases, touched


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 calls per case, not 10,000")
    args = parser.parse_args(argv)
    cases, touched = collect(args.quick)
    print("\n".join(machine_lines()))
    print()
    print(section(cases, touched).markdown(Path("docs")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
