"""A real Redis Sentinel setup on loopback: one primary, its replicas and three sentinels.

``LocalSentinels()`` starts a primary, ``replicas`` servers that replicate it
and ``sentinels`` Sentinel processes (the binary ``local_redis`` finds, run
with ``--sentinel``) that monitor it under ``MASTER_NAME`` with a quorum of
two, and returns once every sentinel knows every replica and the other
sentinels, so a failover can start the moment the primary is lost.
``down_after_ms`` is how long the sentinels wait before they call the primary
down (Sentinel's default, 30 s, would make a drill last minutes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import redis

from service.harness.local_redis import LocalRedis, find_server_binary

__all__ = ["MASTER_NAME", "LocalSentinel", "LocalSentinels"]

MASTER_NAME = "featserve"
"""The name the sentinels monitor the primary under (``FEATSERVE_SENTINEL_MASTER``)."""

SETTLE_TIMEOUT_S = 60.0
"""Long enough for a primary that the sentinels took for down on a busy machine to come back
as a replica (Sentinel converts it after about 20 s)."""
REPLICA_OPTIONS = (
    # Replicas sync at once, instead of the 5 s a diskless sync waits for company.
    "--repl-diskless-sync-delay", "0",
    "--repl-ping-replica-period", "1",
)  # fmt: skip


class LocalSentinel(LocalRedis):
    """One Sentinel process monitoring ``master_port`` on 127.0.0.1."""

    def __init__(
        self, master_port: int, down_after_ms: int, failover_timeout_ms: int, binary: Path
    ) -> None:
        super().__init__(binary=binary)
        # Sentinel rewrites its configuration file as it learns: it must be its own, writable.
        self.config = self.workdir / "sentinel.conf"
        self.config.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )

    def _command(self, log_path: Path) -> list[str]:
        return [
            str(self.binary), str(self.config), "--sentinel",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--logfile", str(log_path),
        ]  # fmt: skip


class LocalSentinels:
    """A primary, its replicas and the sentinels watching them; ``start()`` returns once settled."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
    ) -> None:
        binary = find_server_binary()
        primary = LocalRedis(binary=binary, extra_args=REPLICA_OPTIONS)
        self.servers = [primary] + [
            LocalRedis(
                binary=binary,
                extra_args=(*REPLICA_OPTIONS, "--replicaof", "127.0.0.1", str(primary.port)),
            )
            for _ in range(replicas)
        ]
        """The data servers: the first starts as the primary, the rest as its replicas."""
        self.sentinels = [
            LocalSentinel(primary.port, down_after_ms, failover_timeout_ms, binary)
            for _ in range(sentinels)
        ]

    @property
    def sentinel_addresses(self) -> str:
        """The sentinels as ``FEATSERVE_SENTINELS`` takes them: ``host:port,host:port,...``."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    @property
    def url(self) -> str:
        """A ``redis://`` URL for credentials and database (db 0, no password)."""
        return "redis://127.0.0.1/0"

    def start(self) -> LocalSentinels:
        """Start the servers, then the sentinels, and wait until they know each other."""
        try:
            for server in self.servers:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_until_settled()
        except BaseException:
            self.close()
            raise
        return self

    def primary(self) -> LocalRedis:
        """The server the sentinels name as the primary now."""
        with _client(self.sentinels[0]) as client:
            _, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return next(server for server in self.servers if server.port == int(port))

    def restart_as_replica(self, server: LocalRedis) -> None:
        """Start a stopped server again as a replica of the current primary, and settle."""
        server.extra_args = (*REPLICA_OPTIONS, "--replicaof", "127.0.0.1", str(self.primary().port))
        server.start()
        self.wait_until_settled()

    def wait_until_settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until every sentinel names the same primary, which answers as one, knows every
        running replica in sync, and knows the other sentinels."""
        deadline = time.monotonic() + timeout_s
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the sentinels did not settle within {timeout_s:g} s: {self._views()}"
                )
            time.sleep(0.05)

    def _views(self) -> list[object]:
        """What each sentinel says of the primary and its replicas, for an error message."""
        views: list[object] = []
        for sentinel in self.sentinels:
            try:
                with _client(sentinel) as client:
                    master = client.execute_command("SENTINEL MASTER", MASTER_NAME)
                    known = client.execute_command("SENTINEL REPLICAS", MASTER_NAME)
                views.append(
                    {
                        "primary": (master["port"], master["flags"]),
                        "other sentinels": master["num-other-sentinels"],
                        "replicas": [
                            (r["port"], r["flags"], r["master-link-status"]) for r in known
                        ],
                    }
                )
            except redis.exceptions.RedisError as exc:
                views.append(repr(exc))
        return views

    def _settled(self) -> bool:
        try:
            primary = self.primary()
            with _client(primary) as client:
                replication = client.info("replication")
            if replication["role"] != "master":
                return False
            in_sync = sum(1 for server in self.servers if server.running) - 1
            if replication["connected_slaves"] != in_sync:
                return False
            for sentinel in self.sentinels:
                with _client(sentinel) as client:
                    master = client.execute_command("SENTINEL MASTER", MASTER_NAME)
                    known = client.execute_command("SENTINEL REPLICAS", MASTER_NAME)
                online = [
                    r
                    for r in known
                    if "s_down" not in r["flags"] and r["master-link-status"] == "ok"
                ]
                if (
                    int(master["port"]) != primary.port
                    or "s_down" in master["flags"]
                    or int(master["num-other-sentinels"]) != len(self.sentinels) - 1
                    or len(online) != in_sync
                ):
                    return False
        except (redis.exceptions.RedisError, StopIteration):
            return False
        return True

    def close(self) -> None:
        """Stop every process and remove their working directories."""
        for process in (*self.sentinels, *self.servers):
            process.close()

    def __enter__(self) -> LocalSentinels:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def _client(node: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis(
        port=node.port, socket_connect_timeout=1.0, socket_timeout=2.0, decode_responses=True
    )
    try:
        yield client
    finally:
        client.close()
