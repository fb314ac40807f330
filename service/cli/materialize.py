"""``featserve materialize``: load an offline table into Redis (``features.ingest.materialize``).

featserve materialize TABLE [--group user:features] [--rejects FILE] [--allow-rejects]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.errors import RegistryError, StoreError
from features.ingest.materialize import MaterializeReport, Rejected, materialize
from features.ingest.tables import TableError, open_table
from features.redaction import redact
from features.registry import FRAUD_REGISTRY, FeatureGroup
from features.settings import Settings
from features.stores.base import OnlineStore
from features.stores.factory import open_backing_store
from features.stores.redis import RedisStore, sync_client
from features.stores.write_through import WriteThrough

__all__ = ["register"]

EXIT_REJECTS = 1
EXIT_USAGE = 2
EXIT_STORE = 3


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve materialize`` to a ``featserve`` subcommand parser."""
    parser = commands.add_parser(
        "materialize",
        help="write an offline table (Parquet or CSV) into Redis",
        description="Validate every row, keep the newest per entity, write values and TTL "
        "in pipelined chunks; older events never replace newer ones. REDIS_URL says where.",
    )
    parser.add_argument("table", type=Path, help="a .parquet or .csv file")
    parser.add_argument("--group", default="user:features", help="ENTITY:GROUP (user:features)")
    parser.add_argument("--format", choices=["parquet", "csv"], help="default: from the suffix")
    parser.add_argument("--entity-column", default="entity_id")
    parser.add_argument("--timestamp-column", default="event_timestamp")
    parser.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk")
    parser.add_argument(
        "--rejects", type=Path, help="where refused rows go (default: TABLE.rejects.csv)"
    )
    parser.add_argument(
        "--allow-rejects", action="store_true", help="exit 0 even when rows were refused"
    )
    parser.add_argument(
        "--redis-url",
        help="default: $REDIS_URL. Prefer the variable: a password in this flag shows in `ps` "
        "to every user of the machine",
    )
    parser.add_argument(
        "--backing",
        help="also write to this backing store first: sqlite:PATH or dynamodb:TABLE "
        "(default: $FEATSERVE_BACKING_STORE; none when unset)",
    )
    parser.set_defaults(run=_run_materialize)


def _run_materialize(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        group = _group(args.group)
        table = open_table(args.table, args.format)
    except (RegistryError, TableError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    settings = Settings()
    if args.redis_url:
        settings = settings.model_copy(update={"redis_url": args.redis_url})
    if not settings.redis_url:
        console.print("[red]error:[/] REDIS_URL is not set")
        return EXIT_USAGE
    rejects_path = args.rejects or args.table.with_name(args.table.name + ".rejects.csv")
    redis_store = RedisStore(sync_client(settings, for_writes=True))
    backing_spec = args.backing or settings.backing_store
    try:
        backing = open_backing_store(backing_spec) if backing_spec else None
    except (ValueError, StoreError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        redis_store.close()
        return EXIT_USAGE
    store: OnlineStore = WriteThrough(redis_store, backing) if backing else redis_store
    try:
        with rejects_path.open("w", newline="") as rejects, _progress(console) as progress:
            task = progress.add_task(
                f"{args.table.name} -> {args.group}",
                total=table.total_rows,
            )
            report = materialize(
                table,
                group,
                store,
                entity_column=args.entity_column,
                timestamp_column=args.timestamp_column,
                chunk_rows=args.chunk_rows,
                on_reject=_reject_writer(rejects),
                on_progress=lambda rows: progress.advance(task, rows),
            )
    except TableError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    except StoreError as exc:
        console.print(
            f"[red]error:[/] {redact(str(exc))}\nRe-running is safe: older writes never win."
        )
        return EXIT_STORE
    finally:
        redis_store.close()
        if backing is not None:
            backing.close()
    _print_summary(console, report, rejects_path)
    if report.rows_rejected == 0:
        rejects_path.unlink()
        return 0
    return 0 if args.allow_rejects else EXIT_REJECTS


def _group(name: str) -> FeatureGroup:
    entity, _, group = name.partition(":")
    if not group:
        raise RegistryError(f"--group {name!r}: expected ENTITY:GROUP, e.g. user:features")
    return FRAUD_REGISTRY.group(entity, group)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _reject_writer(handle: TextIO) -> Callable[[Rejected], None]:
    writer = csv.writer(handle)
    writer.writerow(["row", "field", "problem", "record"])

    def write(rejected: Rejected) -> None:
        record = json.dumps(dict(rejected.record), default=str)
        writer.writerow([rejected.row, rejected.field, rejected.problem, record])

    return write


def _print_summary(console: Console, report: MaterializeReport, rejects_path: Path) -> None:
    table = Table(title="materialize", show_header=False)
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row("entity groups written", f"{report.applied:,}")
    table.add_row("skipped: Redis held newer", f"{report.stale:,}")
    table.add_row("rows rejected", f"{report.rows_rejected:,}")
    for field_name, count in report.rejected_by_field.most_common():
        table.add_row(f"  rejected for {field_name}", f"{count:,}")
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s")
    table.add_row("entities per second", f"{report.entities_per_second:,.0f}")
    console.print(table)
    if report.rows_rejected:
        console.print(f"Rejected rows and their reasons: {rejects_path}")
