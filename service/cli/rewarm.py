"""``featserve rewarm``: refill Redis from the backing store (``features.ingest.rewarm``).

featserve rewarm [--backing sqlite:PATH | dynamodb:TABLE] [--group user:features ...]
                 [--chunk-size 1000] [--redis-url URL]

Exit codes: 0 done, 1 Redis refused some groups for their data (a key of another
type), 2 a bad invocation, 3 a store failed (re-running is safe).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.errors import RegistryError, StoreError
from features.ingest.rewarm import RewarmReport, rewarm
from features.redaction import redact
from features.registry import FeatureGroup, Registry
from features.stores.factory import open_backing_store, open_online_store
from features.stores.held import group_label
from service.cli.project_option import chosen_project
from service.cli.store_options import add_redis_url_option, group_named, settings_with_redis_url

__all__ = ["register"]

EXIT_REJECTS = 1
EXIT_USAGE = 2
EXIT_STORE = 3


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve rewarm`` to a ``featserve`` subcommand parser."""
    parser = commands.add_parser(
        "rewarm",
        help="refill Redis from the persistent backing store",
        description="Write every entity group the backing store holds into Redis, in chunks; "
        "anything older than what Redis holds is skipped, so re-running is safe. "
        "REDIS_URL says where Redis is (FEATSERVE_REDIS_MODE how); for DynamoDB, "
        "AWS_ENDPOINT_URL and AWS_DEFAULT_REGION.",
    )
    parser.add_argument(
        "--backing",
        help="sqlite:PATH or dynamodb:TABLE (default: $FEATSERVE_BACKING_STORE)",
    )
    parser.add_argument(
        "--group",
        action="append",
        dest="groups",
        metavar="ENTITY:GROUP",
        help="a group to rewarm, repeatable (default: every group)",
    )
    parser.add_argument("--chunk-size", type=int, default=1000, help="entity groups per write")
    add_redis_url_option(parser)
    parser.set_defaults(run=_run, settings=None)


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    settings = settings_with_redis_url(args)
    try:
        groups = _groups(chosen_project(args).registry, args.groups)
        if settings.redis_missing:
            raise ValueError(settings.redis_missing)
        if args.chunk_size < 1:
            raise ValueError(f"--chunk-size {args.chunk_size}: must be at least 1")
        spec = args.backing or settings.backing_store
        if not spec:
            raise ValueError("no backing store: pass --backing or set FEATSERVE_BACKING_STORE")
        source = open_backing_store(spec)
    except (RegistryError, ValueError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    except StoreError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_STORE
    try:
        target = open_online_store(settings, for_writes=True)
    except StoreError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        source.close()
        return EXIT_STORE
    try:
        with _progress(console) as progress:
            task = progress.add_task(f"{spec} -> Redis", total=None)
            report = rewarm(
                source,
                target,
                groups,
                chunk_size=args.chunk_size,
                on_progress=lambda count: progress.advance(task, count),
            )
    except StoreError as exc:
        console.print(
            f"[red]error:[/] {redact(str(exc))}\nRe-running is safe: older writes never win."
        )
        return EXIT_STORE
    finally:
        target.close()
        source.close()
    _print_summary(console, report, groups)
    return EXIT_REJECTS if report.rejected else 0


def _groups(registry: Registry, names: Sequence[str] | None) -> list[FeatureGroup]:
    if not names:
        return [g for entity in registry.entities for g in registry.groups_of(entity.name)]
    return [group_named(registry, name) for name in names]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} entity groups"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _print_summary(console: Console, report: RewarmReport, groups: Sequence[FeatureGroup]) -> None:
    table = Table(title="rewarm", show_header=False)
    table.add_row("groups", ", ".join(group_label(group) for group in groups))
    table.add_row("entity groups read", f"{report.read:,}")
    table.add_row("entity groups written", f"{report.written:,}")
    table.add_row("skipped: Redis held newer", f"{report.stale:,}")
    table.add_row("skipped: older than the TTL", f"{report.expired:,}")
    table.add_row("rejected by Redis for their data", f"{report.rejected:,}")
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s")
    console.print(table)
