"""Behaviour of the test TCP proxy, against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.harness.local_redis import LocalRedis
from service.harness.tcp_proxy import TcpProxy
from service.harness.waiting import wait_until

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


def connect(proxy: TcpProxy, socket_timeout: float = 5.0, **kwargs: Any) -> redis.Redis:
    """A sync client through ``proxy`` that never retries, so every fault surfaces."""
    return redis.Redis.from_url(
        proxy.redis_url, socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0), **kwargs
    )


def raw_connection(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=5.0)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed early")
        data += chunk
    return data


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as local_redis:
        yield local_redis


@pytest.fixture
def proxy(server: LocalRedis) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", server.port) as tcp_proxy:
        yield tcp_proxy


@pytest.fixture
def client(proxy: TcpProxy) -> Iterator[redis.Redis]:
    """A client through the proxy, warmed up (handshake done), with counters zeroed."""
    with connect(proxy) as warm_client:
        warm_client.ping()
        proxy.reset_counters()
        yield warm_client


def test_forwards_bytes_both_ways_and_counts_them(proxy: TcpProxy) -> None:
    with raw_connection(proxy) as sock:
        sock.sendall(PING)
        assert recv_exactly(sock, len(PONG)) == PONG

    assert (proxy.connections, proxy.round_trips) == (1, 1)
    assert (proxy.bytes_up, proxy.bytes_down) == (len(PING), len(PONG))
    proxy.reset_counters()
    assert (proxy.connections, proxy.round_trips, proxy.bytes_up, proxy.bytes_down) == (0, 0, 0, 0)


def test_forwards_commands_and_replies(server: LocalRedis, client: redis.Redis) -> None:
    client.set("proxy:greeting", "hello")
    with redis.Redis(port=server.port) as direct:
        assert direct.get("proxy:greeting") == b"hello"
        direct.set("proxy:greeting", "bonjour")
    assert client.get("proxy:greeting") == b"bonjour"


def test_pipeline_sent_in_one_write_is_one_round_trip(proxy: TcpProxy, client: redis.Redis) -> None:
    for i in range(50):
        client.hset(f"proxy:feat:{i}", mapping={"a": i, "b": -i})
    proxy.reset_counters()

    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.hmget(f"proxy:feat:{i}", "a", "b")
    results = pipe.execute()

    assert results == [[str(i).encode(), str(-i).encode()] for i in range(50)]
    assert proxy.round_trips == 1


def test_sequential_commands_are_one_round_trip_each(proxy: TcpProxy, client: redis.Redis) -> None:
    for i in range(5):
        client.get(f"proxy:missing:{i}")

    assert proxy.round_trips == 5
    assert proxy.connections == 0  # the warmed-up connection was reused


def test_a_request_read_in_several_chunks_is_one_round_trip(
    proxy: TcpProxy, client: redis.Redis
) -> None:
    value = b"v" * (3 << 20)  # bigger than the proxy's 1 MiB reads: several chunks

    assert client.set("proxy:big", value)

    assert proxy.round_trips == 1
    assert proxy.bytes_up > len(value)


def test_async_client_pipeline_and_sequential_round_trips(proxy: TcpProxy) -> None:
    async def scenario() -> tuple[list[Any], int, int]:
        client = redis.asyncio.Redis.from_url(proxy.redis_url, retry=AsyncRetry(NoBackoff(), 0))
        try:
            await client.ping()
            proxy.reset_counters()
            pipe = client.pipeline(transaction=False)
            for i in range(20):
                pipe.set(f"proxy:async:{i}", i)
                pipe.get(f"proxy:async:{i}")
            results = await pipe.execute()
            after_pipeline = proxy.round_trips
            for i in range(3):
                await client.get(f"proxy:async:{i}")
            return results, after_pipeline, proxy.round_trips
        finally:
            await client.aclose()

    results, after_pipeline, after_sequential = asyncio.run(scenario())

    assert results == [x for i in range(20) for x in (True, str(i).encode())]
    assert (after_pipeline, after_sequential) == (1, 4)


def test_latency_delays_each_round_trip(proxy: TcpProxy, client: redis.Redis) -> None:
    proxy.set_latency(0.05)
    for _ in range(2):
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started >= 0.05
    proxy.set_latency(0)
    assert client.ping()


def test_latency_preserves_order_of_a_multi_chunk_pipeline(
    proxy: TcpProxy, client: redis.Redis
) -> None:
    proxy.set_latency(0.02)
    values = {
        f"proxy:order:{i}": f"{i}:".encode() + bytes([65 + i % 26]) * 8000 for i in range(200)
    }

    pipe = client.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value)
        pipe.get(key)
    results = pipe.execute()

    assert results == [x for value in values.values() for x in (True, value)]
    assert proxy.bytes_up > 1_600_000  # large enough to be read in several chunks


def test_blackhole_stalls_connections_until_lifted(proxy: TcpProxy) -> None:
    with connect(proxy, socket_timeout=0.2) as existing, connect(proxy, socket_timeout=0.2) as new:
        assert existing.ping()
        proxy.reset_counters()
        proxy.blackhole(True)

        with pytest.raises(redis.exceptions.TimeoutError):
            existing.get("proxy:anything")
        with pytest.raises(redis.exceptions.TimeoutError):
            new.ping()  # the connection is accepted, but its handshake gets no answer
        wait_until(lambda: proxy.connections == 1)
        assert (proxy.round_trips, proxy.bytes_up, proxy.bytes_down) == (0, 0, 0)

    proxy.blackhole(False)
    with connect(proxy) as fresh:
        assert fresh.ping()


def test_reset_connections_breaks_existing_connections(proxy: TcpProxy) -> None:
    # A pooled client may check idle connections before use and silently reconnect (redis-py
    # 8.1 does, 8.0 does not), so the failure is observed on a client that holds on to its one
    # connection.
    with connect(proxy, single_connection_client=True) as held:
        assert held.ping()
        proxy.reset_counters()

        proxy.reset_connections()

        with pytest.raises(redis.exceptions.ConnectionError):
            held.ping()
    with connect(proxy) as fresh:
        assert fresh.ping()
    assert proxy.connections == 1  # new connections still get through


def test_reset_connections_sends_a_tcp_reset(proxy: TcpProxy) -> None:
    with raw_connection(proxy) as sock:
        sock.sendall(PING)
        assert recv_exactly(sock, len(PONG)) == PONG

        proxy.reset_connections()

        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_refuse_rejects_new_connections_but_keeps_existing_ones(
    proxy: TcpProxy, client: redis.Redis
) -> None:
    port = proxy.port
    proxy.refuse(True)

    with pytest.raises(ConnectionRefusedError):
        raw_connection(proxy)
    with connect(proxy) as refused, pytest.raises(redis.exceptions.ConnectionError):
        refused.ping()
    assert client.ping()

    proxy.refuse(False)
    assert proxy.port == port
    with connect(proxy) as fresh:
        assert fresh.ping()


def test_close_ends_connections_and_the_thread(server: LocalRedis) -> None:
    before = set(threading.enumerate())
    proxy = TcpProxy("127.0.0.1", server.port).start()
    proxy_threads = set(threading.enumerate()) - before
    assert len(proxy_threads) == 1

    with connect(proxy) as proxied:
        assert proxied.ping()
        proxy.close()
        assert not any(thread.is_alive() for thread in proxy_threads)
        with pytest.raises(redis.exceptions.ConnectionError):
            proxied.ping()
    proxy.close()  # closing twice is harmless
