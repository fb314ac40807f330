"""``featserve materialize``: load an offline table into Redis (``features.ingest.materialize``).

featserve materialize TABLE [--group user:features] [--rejects FILE] [--allow-rejects] [--json]
    [--engine local|spark] [--spark-master local[2]] [--partitions N]

``--engine spark`` reads the table with Spark and writes it from the executors
(``features.ingest.spark_engine``): the same rules, the same summary; rejects go to a
CSV dataset (a directory, default ``TABLE.rejects``).

Exit codes: 0 every row accounted for and none rejected (or ``--allow-rejects``),
1 rows were rejected, 2 a bad invocation (nothing written), 3 a store failed
(the summary says from which row on; re-running is safe), 4 the table could
not be read to the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.errors import RegistryError, StoreError
from features.ingest.materialize import (
    Materialization,
    MaterializeReport,
    Rejected,
    table_columns,
)
from features.ingest.tables import OfflineTable, TableError, open_table
from features.project import Project
from features.redaction import redact
from features.registry import FeatureGroup
from features.settings import Settings
from features.stores.base import OnlineStore
from features.stores.factory import open_backing_store, open_online_store
from features.stores.write_through import WriteThrough
from service.cli.project_option import chosen_project
from service.cli.store_options import add_redis_url_option, group_named, settings_with_redis_url

__all__ = ["register"]

EXIT_REJECTS = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_UNREADABLE = 4


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``featserve materialize`` to a ``featserve`` subcommand parser."""
    parser = commands.add_parser(
        "materialize",
        help="write an offline table (Parquet or CSV) into Redis",
        description="Validate every row, merge rows per entity value by value, write values "
        "and TTL (from the event time) in pipelined chunks; older values never replace newer "
        "ones. Every row is counted as written, skipped as older, expired or rejected. "
        "REDIS_URL says where (and FEATSERVE_REDIS_MODE how: standalone, cluster or sentinel).",
    )
    parser.add_argument("table", type=Path, help="a .parquet or .csv file")
    parser.add_argument(
        "--group", help="ENTITY:GROUP, e.g. user:features (default: the entity's first group)"
    )
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
        "--json", action="store_true", help="print the summary as JSON on stdout when done"
    )
    add_redis_url_option(parser)
    parser.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: this process reads and writes; spark: Spark reads the table and its "
        "executors write (pip install featserve[spark], or run under spark-submit)",
    )
    parser.add_argument(
        "--spark-master",
        help="with --engine spark: where to run (local[2], spark://host:7077, ...); default: "
        "what spark-submit set, else local[*]",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        help="with --engine spark: how many tasks write (default: one per core of the cluster)",
    )
    parser.add_argument(
        "--backing",
        help="also write to this backing store first: sqlite:PATH or dynamodb:TABLE "
        "(default: $FEATSERVE_BACKING_STORE; none when unset)",
    )
    parser.set_defaults(run=_run_materialize, settings=None)


def _run_materialize(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        group = _group(chosen_project(args), args.group)
        table = open_table(args.table, args.format)
        table_columns(table, group, args.entity_column, args.timestamp_column)
    except (RegistryError, TableError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_USAGE
    settings = settings_with_redis_url(args)
    if settings.redis_missing:
        console.print(f"[red]error:[/] {settings.redis_missing}")
        return EXIT_USAGE
    if args.engine == "spark":
        return _run_on_spark(args, console, group, table, settings)
    rejects_path = args.rejects or args.table.with_name(args.table.name + ".rejects.csv")
    try:
        redis_store = open_online_store(settings, for_writes=True)
    except StoreError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return EXIT_STORE
    backing_spec = args.backing or settings.backing_store
    try:
        backing = open_backing_store(backing_spec) if backing_spec else None
    except (ValueError, StoreError) as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        redis_store.close()
        return EXIT_USAGE
    store: OnlineStore = WriteThrough(redis_store, backing) if backing else redis_store
    run: Materialization | None = None
    try:
        with rejects_path.open("w", newline="") as rejects, _progress(console) as progress:
            task = progress.add_task(f"{args.table.name} -> {args.group}", total=table.total_rows)

            def advance(rows: int) -> None:
                rejects.flush()
                progress.advance(task, rows)

            run = Materialization(
                table,
                group,
                store,
                entity_column=args.entity_column,
                timestamp_column=args.timestamp_column,
                chunk_rows=args.chunk_rows,
                max_clock_skew_s=settings.max_clock_skew_s,
                on_reject=_reject_writer(rejects),
                on_progress=advance,
            )
            report = run.run()
    finally:
        redis_store.close()
        if backing is not None:
            backing.close()
        if run is not None:
            # Also when the run died: the rows it accounted for, and where it stopped.
            _print_summary(console, run.report, rejects_path)
    code = _exit_code(report, args.allow_rejects)
    if args.json:
        _print_json(report, args, rejects_path, code)
    if report.rows_rejected == 0:
        rejects_path.unlink()
    return code


def _run_on_spark(
    args: argparse.Namespace,
    console: Console,
    group: FeatureGroup,
    table: OfflineTable,
    settings: Settings,
) -> int:
    """``--engine spark``: the same summary and exit codes; the rejects are a CSV dataset."""
    if args.backing or settings.backing_store:
        console.print("[red]error:[/] --engine spark writes Redis only; unset --backing")
        return EXIT_USAGE
    # Imported here: only this engine needs pyspark (an extra the Bento does not install).
    from features.ingest.spark_engine import (
        failed_run,
        materialize_dataframe,
        read_table,
        spark_session,
    )

    rejects_path = args.rejects or args.table.with_name(args.table.name + ".rejects")
    spark = spark_session(args.spark_master, args.chunk_rows)
    frame = read_table(spark, str(args.table), table.kind)
    with _progress(console) as progress:
        task = progress.add_task(f"{args.table.name} -> {args.group}", total=table.total_rows)
        try:
            run = materialize_dataframe(
                frame,
                group,
                settings=settings,
                entity_column=args.entity_column,
                timestamp_column=args.timestamp_column,
                from_csv=table.kind == "csv",
                partitions=args.partitions,
                rejects_path=str(rejects_path),
                on_progress=lambda rows: progress.update(task, completed=rows),
            )
            report, written_to = run.report, run.rejects_path
        except Exception as exc:
            error = redact(str(exc))
            if not any(name in error for name in _STORE_ERRORS):
                raise
            # The line of the job's error that names the store error that stopped it.
            cause = next(
                line for line in error.splitlines() if any(n in line for n in _STORE_ERRORS)
            )
            report = failed_run(cause.strip(), retry_safe=True)
            written_to = None
    shown_path = Path(written_to) if written_to else rejects_path
    _print_summary(console, report, shown_path)
    code = _exit_code(report, args.allow_rejects)
    if args.json:
        _print_json(report, args, shown_path, code)
    return code


_STORE_ERRORS = ("StoreUnavailable", "StoreTimeout", "StoreError")
"""Names in a failed Spark job's error that say a store, not the data or the code, stopped it."""


def _exit_code(report: MaterializeReport, allow_rejects: bool) -> int:
    if report.stopped is not None:
        return EXIT_STORE if report.stopped.cause == "store" else EXIT_UNREADABLE
    if report.rows_rejected and not allow_rejects:
        return EXIT_REJECTS
    return 0


def _print_json(
    report: MaterializeReport, args: argparse.Namespace, rejects_path: Path, code: int
) -> None:
    summary: dict[str, Any] = {
        "table": str(args.table),
        "group": args.group,
        **report.as_json(),
        "rejects_file": str(rejects_path) if report.rows_rejected else None,
        "exit_code": code,
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


def _group(project: Project, name: str | None) -> FeatureGroup:
    if name is None:
        return project.registry.groups_of(project.entity.name)[0]
    return group_named(project.registry, name)


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
        record = json.dumps({k: _plain(v) for k, v in rejected.record.items()}, default=str)
        writer.writerow([rejected.row, rejected.field, rejected.problem, record])

    return write


def _plain(value: Any) -> Any:
    """A table cell for JSON: CSV cells arrive as bytes, which need not be UTF-8."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _print_summary(console: Console, report: MaterializeReport, rejects_path: Path) -> None:
    table = Table(title="materialize", show_header=False)
    table.add_row("rows read", f"{report.rows:,}")
    table.add_row("  written", f"{report.written:,}")
    table.add_row("  skipped: a newer value was held", f"{report.skipped_older:,}")
    table.add_row("  expired: older than the TTL", f"{report.expired:,}")
    table.add_row("  rejected", f"{report.rows_rejected:,}")
    for field_name, count in report.rejected_by_field.most_common():
        table.add_row(f"    for {field_name}", f"{count:,}")
    table.add_row("entity groups written", f"{report.entity_groups_written:,}")
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s")
    table.add_row("entities per second", f"{report.entities_per_second:,.0f}")
    console.print(table)
    if report.rows_rejected:
        console.print(f"Rejected rows and their reasons: {rejects_path}")
    stopped = report.stopped
    if stopped is not None:
        console.print(
            f"[red]stopped before row {stopped.before_row:,}:[/] {redact(stopped.error)}\n"
            f"Rows from {stopped.before_row:,} on were not accounted for. "
            + (
                "Re-running is safe: older values never replace newer ones."
                if stopped.retry_safe
                else "Fix the cause, then run again: older values never replace newer ones."
            )
        )
