"""How full a Redis server is, from its ``INFO``: memory in use, its limit, what it evicted.

An operator needs three numbers before Redis starts refusing writes (``OOM`` with
``noeviction``) or silently dropping feature hashes (any other ``maxmemory-policy``): the
memory in use, ``maxmemory``, and how many keys it has evicted since it started.  The
service samples them off the request path (``service.metrics.StoreGauges``), per node on a
Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["INFO_SECTIONS", "MemoryReport", "memory_report"]

INFO_SECTIONS = ("memory", "stats")
"""The ``INFO`` sections the report reads (one command, both sections)."""


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """One Redis server's memory, as its ``INFO`` said it."""

    node: str
    """Which server: empty for a single one, a cluster node's role and slots otherwise."""
    used_bytes: int
    """``used_memory``: what the data set and Redis' own structures take."""
    max_bytes: int
    """``maxmemory``; 0 when no limit is set."""
    policy: str
    """``maxmemory_policy``: ``noeviction`` refuses writes when full, others evict keys."""
    evicted_keys: int
    """Keys evicted for ``maxmemory`` since the server started."""

    @property
    def used_share(self) -> float | None:
        """``used_bytes`` as a share of ``max_bytes``; ``None`` without a limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None


def memory_report(node: str, info: Mapping[str, Any]) -> MemoryReport:
    """The report in ``info``, redis-py's parsed ``INFO memory stats``."""
    return MemoryReport(
        node=node,
        used_bytes=int(info["used_memory"]),
        max_bytes=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", "")),
        evicted_keys=int(info.get("evicted_keys", 0)),
    )
