"""A real Redis Cluster on loopback: primaries and replicas as ``LocalRedis`` children.

``LocalCluster(primaries=3, replicas=1)`` starts ``primaries x (1 + replicas)``
servers in cluster mode (the binary ``local_redis`` finds), gives primary
``i`` the ``i``-th share of the 16,384 slots (``CLUSTER ADDSLOTSRANGE``),
introduces every node to the first (``CLUSTER MEET``), makes the replicas of
primary ``i`` replicate it (``CLUSTER REPLICATE``), and returns once every
node reports ``cluster_state:ok`` and every replica is in sync.

It forms the cluster with plain commands through redis-py rather than
``redis-cli --cluster create``: the pairing of replicas to primaries is then
ours (a drill knows which node stands in for which), no particular CLI binary
must be on PATH, and no fixed one-second waits of the CLI's join loop slow
the tests down.

The nodes run with ``cluster-require-full-coverage no`` unless asked
otherwise: with the server's default (``yes``) every node refuses every
command while any slot has no live primary, which turns the loss of one
shard into an outage of all of them until the promotion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from service.harness.local_redis import LocalRedis, find_server_binary, free_ports

__all__ = ["SLOTS", "LocalCluster"]

SLOTS = 16384
"""Hash slots of a Redis Cluster."""

FORM_TIMEOUT_S = 30.0


class LocalCluster:
    """Primaries and replicas in cluster mode on 127.0.0.1; ``start()`` returns once it serves."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        full_coverage: bool = False,
    ) -> None:
        binary = find_server_binary()
        options = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if full_coverage else "no",
            # Replicas sync at once, instead of the 5 s a diskless sync waits for company.
            "--repl-diskless-sync-delay", "0",
            # Replicas learn of a primary's offset at its pings; the others list a replica only
            # once its offset is not 0, after the first ping (10 s by default).
            "--repl-ping-replica-period", "1",
        )  # fmt: skip
        count = primaries * (1 + replicas)
        # The bus ports are chosen too: the default, port + 10000, may be taken or past 65535.
        ports = free_ports(2 * count)
        self._bus_ports = ports[count:]
        self.nodes = [
            LocalRedis(port, binary, (*options, "--cluster-port", str(bus_port)))
            for port, bus_port in zip(ports[:count], self._bus_ports, strict=True)
        ]
        """Every node: the first ``primaries`` start as primaries, then their replicas in turn."""
        self._primaries = primaries

    @property
    def url(self) -> str:
        """A ``redis://`` URL naming one node (the first primary); clients discover the rest."""
        return self.nodes[0].url

    def start(self) -> LocalCluster:
        """Start every node, form the cluster and wait until it serves every slot."""
        try:
            for node in self.nodes:
                node.start()
            self._form()
            self.wait_until_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        first_primaries = self.nodes[: self._primaries]
        share = SLOTS // self._primaries
        for index, node in enumerate(first_primaries):
            last = SLOTS - 1 if index == self._primaries - 1 else (index + 1) * share - 1
            with _client(node) as client:
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)
        for node in self.nodes[1:]:
            with _client(node) as client:
                client.execute_command(
                    "CLUSTER MEET", "127.0.0.1", self.nodes[0].port, self._bus_ports[0]
                )
        _wait(lambda: all(_known_nodes(n) == len(self.nodes) for n in self.nodes))
        for index, node in enumerate(self.nodes[self._primaries :]):
            primary_id = self.node_id(first_primaries[index % self._primaries])
            with _client(node) as client:
                client.execute_command("CLUSTER REPLICATE", primary_id)

    def wait_until_healthy(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """Wait until every running node reports ``cluster_state:ok``, every slot has a primary,
        and every running replica is in sync with its primary."""
        _wait(self._healthy, timeout_s)

    def _healthy(self) -> bool:
        in_sync = 0
        views = []
        for node in self.nodes:
            if not node.running:
                continue
            with _client(node) as client:
                if client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
                replication = client.info("replication")
                views.append(client.execute_command("CLUSTER SLOTS"))
            if replication["role"] == "slave":
                if replication["master_link_status"] != "up":
                    return False
                in_sync += 1
        # Every node serves every slot and lists every replica in sync (a replica shows up
        # in CLUSTER SLOTS once its primary's pings have told the others its offset).
        return all(
            sum(int(end) - int(start) + 1 for start, end, *_ in view) == SLOTS
            and len({int(r[1]) for _, replicas in map(_split, view) for r in replicas}) == in_sync
            for view in views
        )

    def primaries(self) -> list[LocalRedis]:
        """The nodes that serve slots now, in slot order."""
        serving: dict[int, LocalRedis] = {}
        for _, _, owner, *_ in sorted(self._slot_ranges(), key=lambda r: int(r[0])):
            serving.setdefault(int(owner[1]), self._by_port(int(owner[1])))
        return list(serving.values())

    def primary_for(self, key: str) -> LocalRedis:
        """The node that serves ``key``'s slot now."""
        return self.serving(key_slot(key.encode()))[0]

    def replicas_of(self, primary: LocalRedis) -> list[LocalRedis]:
        """The nodes the cluster lists as replicas of ``primary`` now."""
        for _, _, owner, *replicas in self._slot_ranges():
            if int(owner[1]) == primary.port:
                return [self._by_port(int(replica[1])) for replica in replicas]
        return []

    def serving(self, slot: int) -> list[LocalRedis]:
        """The primary serving ``slot`` now, then its replicas."""
        for start, end, owner, *replicas in self._slot_ranges():
            if int(start) <= slot <= int(end):
                return [self._by_port(int(node[1])) for node in (owner, *replicas)]
        raise LookupError(f"slot {slot} is not served")

    def _slot_ranges(self) -> list[Any]:
        """``CLUSTER SLOTS`` as one running node sees it: [start, end, primary, *replicas]."""
        with _client(next(node for node in self.nodes if node.running)) as client:
            ranges: list[Any] = client.execute_command("CLUSTER SLOTS")
        return ranges

    def _by_port(self, port: int) -> LocalRedis:
        return next(node for node in self.nodes if node.port == port)

    def node_id(self, node: LocalRedis) -> str:
        """The cluster's id of ``node``."""
        with _client(node) as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def flush(self) -> None:
        """Empty every primary (their replicas follow)."""
        for primary in self.primaries():
            with _client(primary) as client:
                client.flushall()

    def close(self) -> None:
        """Stop every node and remove their working directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
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
    client = redis.Redis(port=node.port, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        yield client
    finally:
        client.close()


def _known_nodes(node: LocalRedis) -> int:
    with _client(node) as client:
        return len(client.execute_command("CLUSTER NODES"))


def _wait(predicate: Callable[[], bool], timeout_s: float = FORM_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not settle within {timeout_s:g} s")
        time.sleep(0.05)


def _split(slot_range: list[Any]) -> tuple[Any, list[Any]]:
    """A ``CLUSTER SLOTS`` entry as (its primary, its replicas)."""
    return slot_range[2], slot_range[3:]
