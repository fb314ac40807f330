"""The least-privilege Redis users that README.md documents, against a real server.

The ``ACL SETUSER`` lines are read from README.md itself, so the documented
permissions are the tested ones: the reader serves every feature group and
is refused writes and other keys; the writer materializes every group
(loading the scripts itself on a fresh server) and cannot read features.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from features.errors import StoreError
from features.ingest.updates import parse_update
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.sources import Source
from features.stores.redis import RedisStore, async_redis_store, sync_client
from service.cli import main
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.served import ROOT

NOW = int(time.time())
FEATURES = EXAMPLE_REGISTRY.group("user", "features")


def documented_acl_commands() -> list[list[str]]:
    """Every ``ACL SETUSER featserve-...`` line of README.md, split into arguments."""
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line.split() for line in lines if line.startswith("ACL SETUSER featserve-")]
    assert {command[2] for command in commands} == {"featserve-reader", "featserve-writer"}
    return commands


@dataclass
class AclServer:
    server: LocalRedis
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.server.port}/0"

    def settings(self, user: str) -> Settings:
        return Settings(
            redis_url=self.url(user), redis_socket_timeout_ms=5000, redis_connect_timeout_ms=5000
        )


@pytest.fixture
def acl_server(own_redis: LocalRedis) -> Iterator[AclServer]:
    passwords = {}
    with redis.Redis(port=own_redis.port) as admin:
        for command in documented_acl_commands():
            user = command[2]
            passwords[user] = secrets.token_urlsafe(16)
            arguments = [
                f">{passwords[user]}" if part.startswith(">") else part for part in command
            ]
            assert admin.execute_command(*arguments) in (b"OK", True)
    yield AclServer(own_redis, passwords)


def materialize_demo(
    acl_server: AclServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", acl_server.url("featserve-writer"))
    tables = tmp_path / "tables"
    assert main(["demo-data", "--users", "5", "--out", str(tables)]) == 0
    for path in sorted(tables.glob("*.parquet")):
        group = path.stem.removeprefix("user_")
        assert main(["materialize", str(path), "--group", f"user:{group}"]) == 0, group


def test_the_writer_materializes_and_the_reader_serves(
    acl_server: AclServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    materialize_demo(acl_server, tmp_path, monkeypatch)
    settings = acl_server.settings("featserve-reader")

    async def resolve() -> tuple[dict[str, Source], bool, int]:
        store = async_redis_store(settings)
        cache: FeatureCache[CachedGroup] = FeatureCache(0, 0, 0)
        resolver = Resolver(EXAMPLE_REGISTRY, [redis_tier(store, settings)], cache, 5.0)
        try:
            [entity] = await resolver.resolve(["u000003"], resolver.selection("user"))
            sources = {name: group.source for name, group in entity.groups.items()}
            [memory] = await store.memory()
            return sources, await store.ping(), memory.used_bytes
        finally:
            await store.close()

    sources, answers_ping, used_bytes = asyncio.run(resolve())
    assert sources == {
        "features": Source.REDIS,
        "recent_items": Source.REDIS,
        "embedding": Source.REDIS,
    }
    assert answers_ping
    assert used_bytes > 0


def test_the_reader_cannot_write_or_reach_other_keys(acl_server: AclServer) -> None:
    store = RedisStore(sync_client(acl_server.settings("featserve-reader"), for_writes=True))
    try:
        with pytest.raises(StoreError, match="no permissions"):
            store.write([parse_update(FEATURES, "u1", NOW, {"tx_count_1h": 1})])
    finally:
        store.close()
    with redis.Redis.from_url(acl_server.url("featserve-reader")) as reader:
        for refused in (("GET", "session:secret"), ("HSET", "user:{u1}:features", "x", 1)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                reader.execute_command(*refused)
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.execute_command("FLUSHALL")
    with redis.Redis(port=acl_server.server.port) as admin:
        assert admin.dbsize() == 0


def test_the_writer_cannot_read_features_or_run_other_commands(acl_server: AclServer) -> None:
    with redis.Redis.from_url(acl_server.url("featserve-writer")) as writer:
        for refused in (
            ("HMGET", "user:{u1}:features", "tx_count_1h"),
            ("KEYS", "*"),
            ("FLUSHALL",),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                writer.execute_command(*refused)
        # EVAL is granted for the write scripts' NOSCRIPT fallback, but a script runs with
        # its caller's permissions: it cannot reach a command or a key the user may not.
        for script, keys in (("return redis.call('FLUSHALL')", ()), ("return 1", ("other:1",))):
            with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|noperm"):
                writer.execute_command("EVAL", script, len(keys), *keys)
