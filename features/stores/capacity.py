"""Capacity planning: memory, shards and connections for an entity count and a peak load.

The rules (the usual rules of thumb for sizing Redis):

- memory = bytes per entity (``MEMORY USAGE`` of its keys) x entities x
  overhead (1.3: the keyspace's own tables, expiry entries, fragmentation);
- a node keeps ``headroom`` (30-40 %) of its memory free, so shards for
  memory = memory / (node memory x (1 - headroom)), rounded up;
- one node is comfortable at 100 K commands/s, so shards for throughput =
  peak rps x entities per request x groups read / 100 K, rounded up;
  the plan takes the larger count; each shard has its replicas;
- pool per worker = peak rps per worker x read latency (s) x 1.5, rounded
  up; every worker may open that many connections to every node, so
  connections per node = pool x workers x service replicas.

The bytes per entity come from a live Redis (``measure_entity_bytes``: it
samples entities with ``RANDOMKEY`` and sums ``MEMORY USAGE`` of their
keys), from the caller, or from the registry (``estimate_entity_bytes``,
a rough figure from the data structures' layout, ``StructureCodec.estimated_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from features.keys import feature_key
from features.registry import FeatureGroup
from features.stores.codecs import codec_of

__all__ = [
    "COMMANDS_PER_NODE",
    "MIN_HEADROOM",
    "CapacityInputs",
    "CapacityPlan",
    "estimate_entity_bytes",
    "measure_entity_bytes",
    "plan_capacity",
]

COMMANDS_PER_NODE = 100_000
"""Commands a second one Redis node serves comfortably."""

MIN_HEADROOM = 0.30
"""The least share of a node's memory a plan should leave free: below it, fragmentation,
replication buffers and a burst of writes reach ``maxmemory`` (refused writes or
evictions)."""

POOL_MARGIN = 1.5
"""Connections per worker beyond the mean in flight (peak rps x latency)."""


class MemoryProbe(Protocol):
    """What ``measure_entity_bytes`` needs of a Redis client (redis-py's have it)."""

    def randomkey(self) -> Any: ...

    def memory_usage(self, key: str, samples: int | None = None) -> Any: ...


@dataclass(frozen=True)
class CapacityInputs:
    """What the plan is made from."""

    entity_bytes: float
    """Redis memory of one entity's keys, all groups together."""
    entities: int
    peak_rps: float
    """Requests a second at the peak, all service replicas together."""
    read_latency_ms: float
    """Mean time of one feature read (the round trip), milliseconds."""
    groups_per_entity: int
    """Keys read per entity per request (one command each)."""
    entities_per_request: float = 1.0
    node_memory_bytes: float = 8 * 2**30
    """The memory one Redis node may use (its ``maxmemory``)."""
    headroom: float = 0.35
    overhead: float = 1.3
    workers: int = 1
    """Service workers per service replica."""
    service_replicas: int = 1
    redis_replicas: int = 1
    """Replicas per shard."""


@dataclass(frozen=True)
class CapacityPlan:
    """What the inputs call for."""

    inputs: CapacityInputs
    data_bytes: float
    memory_bytes: float
    shards_for_memory: int
    commands_per_s: float
    shards_for_throughput: int
    shards: int
    memory_per_node_bytes: float
    node_fill: float
    """Memory per node as a share of the node's memory."""
    redis_nodes: int
    rps_per_worker: float
    pool_per_worker: int
    connections_per_node: int

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the plan risks, for a person to read; empty when nothing."""
        free = 1 - self.node_fill
        if free < MIN_HEADROOM:
            return (
                f"each node would be {self.node_fill:.0%} full, leaving {free:.0%} of its memory "
                f"free: keep at least {MIN_HEADROOM:.0%} (more nodes, or more memory per node), "
                "or Redis refuses writes or evicts feature hashes when it fills",
            )
        return ()

    def as_dict(self) -> dict[str, Any]:
        """The inputs, the plan and its warnings, for JSON."""
        return {**asdict(self), "warnings": list(self.warnings)}


def plan_capacity(inputs: CapacityInputs) -> CapacityPlan:
    """Memory, shards and connections for ``inputs`` (see the module docstring)."""
    data = inputs.entity_bytes * inputs.entities
    memory = data * inputs.overhead
    usable = inputs.node_memory_bytes * (1 - inputs.headroom)
    shards_for_memory = max(1, math.ceil(memory / usable))
    commands = inputs.peak_rps * inputs.entities_per_request * inputs.groups_per_entity
    shards_for_throughput = max(1, math.ceil(commands / COMMANDS_PER_NODE))
    shards = max(shards_for_memory, shards_for_throughput)
    workers = inputs.workers * inputs.service_replicas
    rps_per_worker = inputs.peak_rps / workers
    pool = max(1, math.ceil(rps_per_worker * inputs.read_latency_ms / 1000 * POOL_MARGIN))
    return CapacityPlan(
        inputs=inputs,
        data_bytes=data,
        memory_bytes=memory,
        shards_for_memory=shards_for_memory,
        commands_per_s=commands,
        shards_for_throughput=shards_for_throughput,
        shards=shards,
        memory_per_node_bytes=memory / shards,
        node_fill=memory / shards / inputs.node_memory_bytes,
        redis_nodes=shards * (1 + inputs.redis_replicas),
        rps_per_worker=rps_per_worker,
        pool_per_worker=pool,
        connections_per_node=pool * workers,
    )


def estimate_entity_bytes(groups: tuple[FeatureGroup, ...], id_length: int) -> int:
    """A rough ``MEMORY USAGE`` of one entity's keys, from the groups' layout alone."""
    total = 0
    for group in groups:
        key = len(feature_key(group.entity.key_name, "x" * id_length, group.name))
        total += codec_of(group).estimated_bytes(group, key)
    return total


def measure_entity_bytes(
    client: MemoryProbe,
    groups: tuple[FeatureGroup, ...],
    samples: int = 200,
) -> tuple[float, int]:
    """The mean ``MEMORY USAGE`` of an entity's keys over up to ``samples`` entities drawn with
    ``RANDOMKEY``, and how many were drawn (0 when Redis holds none of ``groups``' keys).

    A string group's sibling event-time key counts too; keys an entity lacks count nothing.
    """
    entity = groups[0].entity.key_name
    seen: set[str] = set()
    for _ in range(samples * 10):
        if len(seen) >= samples:
            break
        key = client.randomkey()
        if key is None:
            break
        text = key.decode() if isinstance(key, bytes) else str(key)
        prefix, _, rest = text.partition(":{")
        entity_id, closed, _ = rest.partition("}")
        if prefix == entity and closed:
            seen.add(entity_id)
    if not seen:
        return 0.0, 0
    total = 0
    for entity_id in seen:
        for group in groups:
            key = feature_key(entity, entity_id, group.name)
            keys = codec_of(group).memory_keys(key)
            total += sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)
    return total / len(seen), len(seen)
