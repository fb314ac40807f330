"""The resolver in process against bare redis-py: what our layers cost over the floor.

Usage: ``python -m bench.resolver_bench [--quick]`` (starts its own Redis with demo data)

For 1, 10 and 100 entities of the ``user:features`` group (what the model
reads), each awaited back to back on one uvloop event loop:

- floor: one ``HMGET`` with the asyncio client (1 entity), and one
  ``pipeline(transaction=False)`` of N ``HMGET`` (any N);
- resolver, cache miss: ``features.serving.resolver.Resolver`` built as the
  service builds it, with the in-process cache off (every call reads Redis);
- resolver, cache hit: the cache on and warm (no Redis at all).

Targets: 1 entity within 1.2x of the bare HMGET, 100 within 1.5x of the
bare pipeline (both at p50), a cache hit under 20 microseconds (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis.asyncio
import uvloop

from bench.report import Section, Stats, markdown_table, ratio, time_async
from features.keys import feature_key
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.stores.base import ReadRequest
from features.stores.redis import async_redis_store
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.served import EXAMPLE_PROJECT

__all__ = ["Case", "collect", "demo_redis", "measure", "resolver_over", "section"]

SIZES = (1, 10, 100)
HIT_TARGET_MS = 0.020
USER_FEATURES = EXAMPLE_REGISTRY.group("user", "features")
FIELDS = USER_FEATURES.feature_names


@contextlib.asynccontextmanager
async def resolver_over(
    redis_url: str, cache_ttl_s: float, deadline_s: float = 10.0
) -> AsyncIterator[Resolver]:
    """A resolver over Redis at ``redis_url``, built as ``service.service`` builds it.

    The socket timeout is raised to the deadline, so a slow proxy never fails a read.
    """
    settings = Settings(
        redis_url=redis_url, cache_ttl_s=cache_ttl_s, redis_socket_timeout_ms=deadline_s * 1000.0
    )
    store = async_redis_store(settings)
    cache: FeatureCache[CachedGroup] = FeatureCache(
        settings.cache_ttl_s, settings.cache_maxsize, settings.stale_cache_maxsize
    )
    try:
        yield Resolver(EXAMPLE_REGISTRY, [redis_tier(store, settings)], cache, deadline_s)
    finally:
        await store.close()


@contextlib.contextmanager
def demo_redis(n_users: int) -> Iterator[LocalRedis]:
    """A fresh local Redis holding the demo features of ``n_users`` users."""
    with LocalRedis() as server, tempfile.TemporaryDirectory(prefix="featserve-bench-") as tmp:
        with contextlib.redirect_stderr(io.StringIO()):
            load_demo_data(server.url, n_users, Path(tmp), project=EXAMPLE_PROJECT)
        yield server


@dataclass(frozen=True)
class Case:
    """One measured configuration: how many entities, which path, its statistics."""

    entities: int
    path: str
    stats: Stats


def _ids(count: int) -> list[str]:
    return [f"u{i:06d}" for i in range(count)]


async def measure(redis_url: str, iterations: int) -> list[Case]:
    """Every (size, path) case, ``iterations`` calls each after a short warm-up."""
    cases = []
    client = redis.asyncio.Redis.from_url(redis_url)
    store = async_redis_store(Settings(redis_url=redis_url))
    try:
        async with (
            resolver_over(redis_url, cache_ttl_s=0.0) as cold,
            resolver_over(redis_url, cache_ttl_s=3600.0) as warm,
        ):
            selection = cold.selection("user", ["features"])
            for size in SIZES:
                ids = _ids(size)
                keys = [feature_key("user", entity_id, "features") for entity_id in ids]

                async def pipeline(keys: list[str] = keys) -> object:
                    async with client.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.hmget(key, FIELDS)
                        return await pipe.execute()

                paths: dict[str, Callable[[], Awaitable[object]]] = {
                    "bare pipeline of HMGET": pipeline
                }
                if size == 1:
                    paths["bare HMGET"] = partial(client.hmget, keys[0], list(FIELDS))
                requests = [ReadRequest(entity_id, USER_FEATURES, FIELDS) for entity_id in ids]
                paths["store read, no resolver"] = partial(store.read, requests)
                paths["resolver, cache miss"] = partial(cold.resolve, ids, selection)
                paths["resolver, cache hit"] = partial(warm.resolve, ids, selection)
                for name, operation in paths.items():
                    await time_async(operation, max(20, iterations // 10))  # warm-up
                    cases.append(Case(size, name, await time_async(operation, iterations)))
    finally:
        await client.aclose()
        await store.close()
    return cases


def section(cases: list[Case]) -> Section:
    """The report: every case against its floor, and the targets."""
    by = {(c.entities, c.path): c.stats for c in cases}
    rows = []
    for case in cases:
        floor = by[
            (case.entities, "bare HMGET" if case.entities == 1 else "bare pipeline of HMGET")
        ]
        rows.append(
            [
                str(case.entities),
                case.path,
                *case.stats.cells(),
                ratio(case.stats.p50_ms, floor.p50_ms),
            ]
        )
    table = markdown_table(["entities", "path", *Stats.HEADER, "p50 / floor"], rows, left=2)
    one = by[(1, "resolver, cache miss")].p50_ms / by[(1, "bare HMGET")].p50_ms
    hundred = by[(100, "resolver, cache miss")].p50_ms / by[(100, "bare pipeline of HMGET")].p50_ms
    hit_ms = by[(1, "resolver, cache hit")].p50_ms
    targets = markdown_table(
        ["target", "measured", "holds"],
        [
            ["1 entity within 1.2x of the bare HMGET (p50)", f"{one:.2f}x", _yes(one <= 1.2)],
            ["100 within 1.5x of the bare pipeline (p50)", f"{hundred:.2f}x", _yes(hundred <= 1.5)],
            [
                "cache hit under 20 us (p50, 1 entity)",
                f"{hit_ms * 1000:.1f} us",
                _yes(hit_ms <= HIT_TARGET_MS),
            ],
        ],
    )
    return Section(
        "Resolver in process against bare redis-py",
        "Each call awaited back to back on one uvloop loop in the benchmark process (pinned to "
        "its own CPU; Redis on the other), over loopback to a local Redis holding the demo "
        "features. The floor of 1 entity is one `HMGET` with the asyncio client; of N entities, "
        "one `pipeline(transaction=False)` of N `HMGET`. The resolver reads the `user:features` "
        "group, as the model does; cache miss = cache TTL 0 (every call reads Redis), cache hit "
        "= a warm cache (no Redis). `store read, no resolver` is featserve's own round trip "
        "(`AsyncRedisStore.read`: commands packed by hiredis, sent and read on one pooled "
        "connection, replies decoded) without the resolver's cache, breaker and deadline. "
        "`p50 / floor` compares with the bare path of the same size.",
        [table, targets],
    )


def _yes(holds: bool) -> str:
    return "yes" if holds else "**no**"


def collect(redis_url: str, quick: bool) -> list[Case]:
    """Every case, on a uvloop loop: 500 calls each with ``quick``, else 5,000."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(measure(redis_url, 500 if quick else 5000))


def main(argv: list[str] | None = None) -> int:
    """Start a Redis with demo data, measure, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 calls per case, not 5,000")
    args = parser.parse_args(argv)
    with demo_redis(1000) as server:
        print(section(collect(server.url, args.quick)).markdown(Path("docs")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
