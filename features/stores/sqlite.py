"""The SQLite backing store: the default persistent tier for local runs, stdlib only.

One table, one row per entity group, keyed by the Redis key string::

    CREATE TABLE feature_groups (
        key       TEXT PRIMARY KEY,  -- user:{u1}:features, as in Redis
        grp       TEXT NOT NULL,     -- user:features, for scan
        event_ms  INTEGER NOT NULL,  -- the newest event time of the values
        vals      TEXT NOT NULL,     -- JSON, below
        value_ms  TEXT               -- JSON {feature: event ms} of hash values older than
                                     -- event_ms; NULL when every value is at event_ms
    ) WITHOUT ROWID

``vals`` is ``{feature: number}`` for a hash, ``{member: score}`` for a
sorted set, ``{feature: [float, ...]}`` for a string group.  A database made
before ``value_ms`` existed gets the column when it is opened.

The database runs in WAL mode, so reads never wait for a writer, with
``synchronous=FULL``: a ``write`` that returned is on disk, so a push that
was acknowledged survives a power loss, at the price of one fsync per write
call (a chunk of ``materialize``, one ``/push``).  A ``write`` call is one
``BEGIN IMMEDIATE`` transaction: it takes the write lock first, reads the
held rows, merges (``write_rules.held_after_write``) and upserts, so writers in
other threads or processes cannot interleave and an older value never
replaces a newer one.  A row that cannot be decoded, or an upsert SQLite
refuses for its data, refuses the updates of that key only.  Rows are kept
past their group's TTL; reads answer them as absent and writes replace them
whole.  sqlite3 errors are translated into ``StoreError`` leaves here and
nowhere else.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from features.burst_log import BurstLog
from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import FeatureGroup
from features.stores.backing import (
    UnreadableRecord,
    checked_values,
    entity_id_of,
    read_held,
)
from features.stores.base import FeatureUpdate, ReadRequest, StoredValues, WriteOutcome
from features.stores.held import HeldGroup, as_update, group_label
from features.stores.write_rules import Clock, epoch_ms, held_after_write
from features.timing import Stage, StageTimer

__all__ = ["SqliteStore"]

_log = logging.getLogger(__name__)
_unreadable_log = BurstLog(_log)

KEYS_PER_QUERY = 500
"""Keys per ``IN (...)`` lookup, well under SQLite's bound-parameter limit."""

SCAN_PAGE_ROWS = 1000
"""Rows per page of ``scan``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_groups (
    key TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    event_ms INTEGER NOT NULL,
    vals TEXT NOT NULL,
    value_ms TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feature_groups_by_grp ON feature_groups (grp, key);
"""

_UPSERT = """
INSERT INTO feature_groups (key, grp, event_ms, vals, value_ms) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    event_ms = excluded.event_ms, vals = excluded.vals, value_ms = excluded.value_ms
"""

_COLUMNS = "key, event_ms, vals, value_ms"

_Row = tuple[str, Any, Any, Any]


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn sqlite3's exceptions into ours, once, at the boundary."""
    try:
        yield
    except sqlite3.ProgrammingError as exc:
        raise StoreUnavailable(f"SQLite store is closed: {exc}") from exc
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreTimeout(f"SQLite stayed locked: {exc}") from exc
        if code == sqlite3.SQLITE_CANTOPEN:
            raise StoreUnavailable(f"SQLite cannot open the database: {exc}") from exc
        raise StoreError(f"SQLite failed: {exc}") from exc


def _encode(held: HeldGroup) -> tuple[str, str | None]:
    values = json.dumps(held.values, allow_nan=False, separators=(",", ":"))
    times = json.dumps(dict(held.value_ms), separators=(",", ":")) if held.value_ms else None
    return values, times


def _decode(group: FeatureGroup, row: _Row) -> HeldGroup:
    """The held group in ``row``; ``UnreadableRecord`` when it cannot be decoded."""
    _, event_ms, text, times_text = row
    if not isinstance(event_ms, int):
        raise UnreadableRecord(f"event_ms is {event_ms!r}, not epoch milliseconds")
    try:
        stored = json.loads(text)
        times = json.loads(times_text) if times_text is not None else {}
    except (TypeError, ValueError) as exc:
        raise UnreadableRecord(f"not JSON: {exc}") from None
    if not isinstance(stored, dict) or not isinstance(times, dict):
        raise UnreadableRecord("vals and value_ms must be JSON objects")
    if not all(isinstance(at, int) for at in times.values()):
        raise UnreadableRecord("value_ms holds an event time that is not epoch milliseconds")
    values = checked_values(group, stored)
    return HeldGroup(event_ms, values, {n: at for n, at in times.items() if n in values})


class SqliteStore:
    """The SQLite store over one connection, used from the thread that opened it."""

    def __init__(
        self, path: str | Path, busy_timeout_s: float = 5.0, clock: Clock = time.time
    ) -> None:
        """Open (creating if needed) the database at ``path``.

        A write waits up to ``busy_timeout_s`` for another writer's lock, then
        fails with ``StoreTimeout``.  ``clock`` says which groups have expired.
        """
        self._clock = clock
        with _translated_errors():
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._add_value_ms_column()
            except sqlite3.Error:
                self._db.close()
                raise

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order; one query per ``KEYS_PER_QUERY`` distinct keys."""
        if timer is None:
            return self._read(requests)
        with timer.stage(Stage.BACKING):
            return self._read(requests)

    def _read(self, requests: Sequence[ReadRequest]) -> list[StoredValues | None]:
        keys = [_key(request.group, request.entity_id) for request in requests]
        with _translated_errors():
            rows = self._select(keys)
        now_ms = epoch_ms(self._clock)
        return [
            read_held(request, _readable(request.group, rows.get(key)), now_ms)
            for request, key in zip(requests, keys, strict=True)
        ]

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """Merge each update into what is held, all in one transaction; see ``OnlineStore``."""
        if not updates:
            return []
        keys = [_key(update.group, update.entity_id) for update in updates]
        outcomes: list[WriteOutcome] = []
        with _translated_errors(), self._transaction():
            rows = self._select(keys)
            now_ms = epoch_ms(self._clock)
            held: dict[str, HeldGroup | None] = {}
            refused: dict[str, str] = {}
            changed: dict[str, FeatureUpdate] = {}
            for update, key in zip(updates, keys, strict=True):
                if key not in held and key not in refused:
                    row = rows.get(key)
                    try:
                        held[key] = None if row is None else _decode(update.group, row)
                    except UnreadableRecord as exc:
                        refused[key] = f"SQLite holds an unreadable record at {key}: {exc}"
                if key in refused:
                    outcomes.append(WriteOutcome(refused=refused[key]))
                    continue
                merged = held_after_write(held[key], update, now_ms)
                if merged.after is not None:
                    held[key] = merged.after
                    changed[key] = update
                outcomes.append(merged.outcome)
            for key, update in changed.items():
                after = held[key]
                assert after is not None
                problem = self._upsert(key, update, after)
                if problem:
                    refused[key] = problem
        return [
            WriteOutcome(refused=refused[key]) if key in refused else outcome
            for key, outcome in zip(keys, outcomes, strict=True)
        ]

    def _upsert(self, key: str, update: FeatureUpdate, after: HeldGroup) -> str | None:
        """Hold ``after`` at ``key``; why SQLite refused it for its data, or ``None``."""
        values, times = _encode(after)
        try:
            self._db.execute(
                _UPSERT, (key, group_label(update.group), after.event_ms, values, times)
            )
        except (sqlite3.DataError, sqlite3.IntegrityError) as exc:
            return f"SQLite refused the record at {key}: {exc}"
        return None

    def scan(self, group: FeatureGroup) -> Iterator[FeatureUpdate]:
        """Every held entity group of ``group``, in key order, a page of rows at a time."""
        after = ""
        while True:
            with _translated_errors():
                page = self._db.execute(
                    f"SELECT {_COLUMNS} FROM feature_groups "
                    "WHERE grp = ? AND key > ? ORDER BY key LIMIT ?",
                    (group_label(group), after, SCAN_PAGE_ROWS),
                ).fetchall()
            for row in page:
                held = _readable(group, row)
                if held is not None:
                    yield as_update(entity_id_of(row[0], group), group, held)
            if len(page) < SCAN_PAGE_ROWS:
                return
            after = page[-1][0]

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailable``."""
        self._db.close()

    def _select(self, keys: Sequence[str]) -> dict[str, _Row]:
        distinct = list(dict.fromkeys(keys))
        rows: dict[str, _Row] = {}
        for start in range(0, len(distinct), KEYS_PER_QUERY):
            chunk = distinct[start : start + KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT {_COLUMNS} FROM feature_groups WHERE key IN ({marks})", chunk
            ):
                rows[row[0]] = row
        return rows

    def _add_value_ms_column(self) -> None:
        """Give a database made before per-value event times its ``value_ms`` column."""
        if self._has_value_ms():
            return
        with self._transaction():
            if not self._has_value_ms():  # another process may have added it meanwhile
                self._db.execute("ALTER TABLE feature_groups ADD COLUMN value_ms TEXT")

    def _has_value_ms(self) -> bool:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(feature_groups)")}
        return "value_ms" in columns

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.rollback()
            raise
        self._db.execute("COMMIT")


def _readable(group: FeatureGroup, row: _Row | None) -> HeldGroup | None:
    """The held group in ``row``; a row that cannot be decoded is logged and reads as absent."""
    if row is None:
        return None
    try:
        return _decode(group, row)
    except UnreadableRecord as exc:
        _unreadable_log.error(f"ignoring the SQLite record at {row[0]}", exc)
        return None


def _key(group: FeatureGroup, entity_id: str) -> str:
    return feature_key(group.entity.key_name, entity_id, group.name)
