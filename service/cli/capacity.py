"""``featserve capacity``: memory, shards and connections for a load (``features.stores.capacity``).

featserve capacity --entities N --peak-rps R --latency-ms L
                   [--bytes-per-entity B | --measure [--samples 200]] [--json] ...
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from features.errors import RegistryError, StoreError
from features.registry import FeatureGroup
from features.settings import Settings
from features.stores.capacity import (
    CapacityInputs,
    CapacityPlan,
    estimate_entity_bytes,
    measure_entity_bytes,
    plan_capacity,
)
from features.stores.factory import open_redis_client
from features.stores.redis import translated_errors
from service.cli.project_option import chosen_project
from service.cli.store_options import add_redis_url_option, settings_with_redis_url

__all__ = ["register"]

EXIT_USAGE = 2
EXIT_STORE = 3
GIB = 2**30


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve capacity`` to a ``featserve`` subcommand parser."""
    parser = commands.add_parser(
        "capacity",
        help="size Redis for an entity count and a peak load",
        description="Memory per node with overhead, shards for a target memory per node, "
        "connection pool per worker (peak rps x latency x 1.5) and connections per node, "
        "from the registry and a size per entity: given, measured with MEMORY USAGE on a "
        "live Redis (--measure; REDIS_URL and FEATSERVE_REDIS_MODE say where), or estimated "
        "from the registry.",
    )
    parser.add_argument("--entities", type=int, required=True, help="active entities")
    parser.add_argument("--peak-rps", type=float, required=True, help="requests/s at the peak")
    parser.add_argument("--latency-ms", type=float, required=True, help="mean read latency")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--bytes-per-entity", type=float, help="Redis memory of one entity")
    size.add_argument(
        "--measure", action="store_true", help="sample MEMORY USAGE from a live Redis"
    )
    parser.add_argument("--samples", type=int, default=200, help="entities --measure samples")
    parser.add_argument("--entity", help="the entity type (default: the project's)")
    parser.add_argument(
        "--id-length", type=int, default=10, help="entity id length, for the estimate"
    )
    parser.add_argument("--entities-per-request", type=float, default=1.0)
    parser.add_argument("--node-memory-gb", type=float, default=8.0, help="memory per node")
    parser.add_argument("--headroom", type=float, default=0.35, help="share kept free")
    parser.add_argument("--overhead", type=float, default=1.3, help="memory over MEMORY USAGE")
    parser.add_argument("--workers", type=int, help="workers per service replica")
    parser.add_argument("--service-replicas", type=int, default=1)
    parser.add_argument("--redis-replicas", type=int, default=1, help="replicas per shard")
    add_redis_url_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    settings = settings_with_redis_url(args)
    try:
        project = chosen_project(args)
        groups = project.registry.groups_of(args.entity or project.entity.name)
        _check(args)
    except (RegistryError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    if args.bytes_per_entity is not None:
        entity_bytes, source = args.bytes_per_entity, "given"
    elif args.measure:
        try:
            entity_bytes, sampled = _measure(settings, groups, args.samples)
        except StoreError as exc:
            console.print(f"[red]error:[/] {exc}")
            return EXIT_STORE
        if not sampled:
            console.print(f"[red]error:[/] Redis holds no {groups[0].entity.name} keys to measure")
            return EXIT_STORE
        source = f"measured: MEMORY USAGE of {sampled} entities"
    else:
        entity_bytes = estimate_entity_bytes(groups, args.id_length)
        source = f"estimated from the registry ({args.id_length}-character ids)"
    plan = plan_capacity(
        CapacityInputs(
            entity_bytes=entity_bytes,
            entities=args.entities,
            peak_rps=args.peak_rps,
            read_latency_ms=args.latency_ms,
            groups_per_entity=len(groups),
            entities_per_request=args.entities_per_request,
            node_memory_bytes=args.node_memory_gb * GIB,
            headroom=args.headroom,
            overhead=args.overhead,
            workers=args.workers or settings.workers,
            service_replicas=args.service_replicas,
            redis_replicas=args.redis_replicas,
        )
    )
    if args.json:
        print(json.dumps({**plan.as_dict(), "entity_bytes_source": source}, indent=2))
    else:
        Console().print(_table(plan, source))
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    return 0


def _check(args: argparse.Namespace) -> None:
    positive = {
        "--entities": args.entities,
        "--peak-rps": args.peak_rps,
        "--latency-ms": args.latency_ms,
        "--samples": args.samples,
        "--id-length": args.id_length,
        "--entities-per-request": args.entities_per_request,
        "--node-memory-gb": args.node_memory_gb,
        "--service-replicas": args.service_replicas,
        "--bytes-per-entity": args.bytes_per_entity or 1,
        "--workers": args.workers or 1,
    }
    for flag, value in positive.items():
        if value <= 0:
            raise ValueError(f"{flag} {value:g}: must be greater than 0")
    if not 0 <= args.headroom < 1:
        raise ValueError(f"--headroom {args.headroom:g}: must be at least 0 and below 1")
    if args.overhead < 1:
        raise ValueError(f"--overhead {args.overhead:g}: must be at least 1")
    if args.redis_replicas < 0:
        raise ValueError(f"--redis-replicas {args.redis_replicas}: must be 0 or more")


def _measure(
    settings: Settings, groups: tuple[FeatureGroup, ...], samples: int
) -> tuple[float, int]:
    client = open_redis_client(settings)
    try:
        with translated_errors():
            return measure_entity_bytes(client, groups, samples)
    finally:
        client.close()


def _table(plan: CapacityPlan, source: str) -> Table:
    inputs = plan.inputs
    table = Table(title="featserve capacity", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    rows = [
        ("bytes per entity", f"{inputs.entity_bytes:,.0f} B", source),
        ("entities", f"{inputs.entities:,}", ""),
        ("data", _size(plan.data_bytes), "bytes per entity x entities"),
        ("memory", _size(plan.memory_bytes), f"x {inputs.overhead:g} overhead"),
        ("memory per node (target)", _size(inputs.node_memory_bytes),
         f"{inputs.headroom:.0%} kept free"),
        ("shards for memory", f"{plan.shards_for_memory}", ""),
        ("commands/s", f"{plan.commands_per_s:,.0f}",
         f"{inputs.peak_rps:,.0f} rps x {inputs.entities_per_request:g} entities "
         f"x {inputs.groups_per_entity} groups"),
        ("shards for throughput", f"{plan.shards_for_throughput}", "100,000 commands/s a node"),
        ("shards", f"{plan.shards}", ""),
        ("memory per node", _size(plan.memory_per_node_bytes),
         f"{plan.node_fill:.0%} of the node's memory"),
        ("Redis nodes", f"{plan.redis_nodes}",
         f"{plan.shards} primaries x (1 + {inputs.redis_replicas} replicas)"),
        ("rps per worker", f"{plan.rps_per_worker:,.0f}",
         f"{inputs.workers} workers x {inputs.service_replicas} service replicas"),
        ("pool per worker", f"{plan.pool_per_worker}",
         f"rps x {inputs.read_latency_ms:g} ms x 1.5 (FEATSERVE_REDIS_POOL_SIZE)"),
        ("connections per node", f"{plan.connections_per_node:,}",
         "pool x workers x service replicas, reads only"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


def _size(count: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:,.2f} {unit}"
    return f"{count:,.0f} B"
