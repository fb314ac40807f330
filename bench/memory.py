"""Bytes per entity in Redis for each shipped feature group, and the sizing rule on them.

Usage: ``python -m bench.memory [--quick]`` (starts its own Redis with demo data)

After ``service.cli.demo.load_demo_data``, ``MEMORY USAGE key SAMPLES 0`` is
read for a sample of keys of each group of ``EXAMPLE_REGISTRY``; the mean
per group and per entity (all groups) is scaled by the sizing rule
(``features.stores.capacity``): bytes x active entities x 1.3, here for 10 M
users, plus 30-40 % headroom.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.report import Section, markdown_table
from bench.resolver_bench import demo_redis
from features.keys import feature_key
from service.harness.example import EXAMPLE_REGISTRY

__all__ = ["GroupSize", "measure", "run"]

USERS_AT_SCALE = 10_000_000
OVERHEAD = 1.3
HEADROOM = 0.35
"""The middle of the usual 30-40 % kept free: provision size / (1 - headroom)."""
GB = 1e9


@dataclass(frozen=True)
class GroupSize:
    """What one group costs per entity."""

    group: str
    structure: str
    keys_sampled: int
    mean_bytes: float
    min_bytes: int
    max_bytes: int


def measure(redis_url: str, n_users: int, sample: int, seed: int = 3) -> list[GroupSize]:
    """Mean ``MEMORY USAGE`` of ``sample`` random users' keys, per group."""
    client = redis.Redis.from_url(redis_url)
    ids = random.Random(seed).sample(range(n_users), min(sample, n_users))
    sizes = []
    try:
        for group in EXAMPLE_REGISTRY.groups_of("user"):
            used = [
                client.memory_usage(feature_key("user", f"u{i:06d}", group.name), samples=0)
                for i in ids
            ]
            present = [int(u) for u in used if u is not None]
            sizes.append(
                GroupSize(
                    group.name,
                    str(group.structure),
                    len(present),
                    statistics.fmean(present) if present else 0.0,
                    min(present, default=0),
                    max(present, default=0),
                )
            )
    finally:
        client.close()
    return sizes


def section(sizes: list[GroupSize], n_users: int) -> Section:
    """Per-group sizes and the 10 M-user estimate."""
    total = sum(s.mean_bytes for s in sizes)
    rows = [
        [
            f"user:{s.group}",
            s.structure,
            str(s.keys_sampled),
            f"{s.mean_bytes:.0f}",
            f"{s.min_bytes}-{s.max_bytes}",
            f"{s.mean_bytes * USERS_AT_SCALE * OVERHEAD / GB:.2f}",
        ]
        for s in sizes
    ]
    rows.append(
        ["all groups", "", "", f"{total:.0f}", "", f"{total * USERS_AT_SCALE * OVERHEAD / GB:.2f}"]
    )
    table = markdown_table(
        ["group", "structure", "keys sampled", "mean bytes", "range", "GB for 10 M users x 1.3"],
        rows,
        left=2,
    )
    provisioned = total * USERS_AT_SCALE * OVERHEAD / (1.0 - HEADROOM) / GB
    return Section(
        "Memory: bytes per entity and sizing",
        f"`MEMORY USAGE key SAMPLES 0` of sampled keys after loading the demo data of "
        f"{n_users:,} users with `service.cli.demo.load_demo_data` (the key, its hash or "
        "sorted set or string, and the TTL). The sizing rule: bytes per entity x active "
        "entities x 1.3.",
        [table],
        notes=[
            f"For 10 M users with every group: {total:.0f} B x 10 M x 1.3 = "
            f"{total * USERS_AT_SCALE * OVERHEAD / GB:.2f} GB of data; with 35 % headroom, "
            f"provision about {provisioned:.1f} GB (`maxmemory`). The `features` hash alone "
            "is what the fraud model reads."
        ],
    )


def run(redis_url: str, n_users: int, quick: bool) -> Section:
    """Measure and build the section."""
    return section(measure(redis_url, n_users, 200 if quick else 2000), n_users)


def main(argv: list[str] | None = None) -> int:
    """Start a Redis with demo data, measure, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="sample 200 keys per group, not 2,000")
    args = parser.parse_args(argv)
    users = 2000
    with demo_redis(users) as server:
        print(run(server.url, users, args.quick).markdown(Path("docs")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
