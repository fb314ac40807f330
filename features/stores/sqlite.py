"""The SQLite backing store: the default persistent tier for local runs, stdlib only.

One table, one row per entity group, keyed by the Redis key string::

    CREATE TABLE feature_groups (
        key       TEXT PRIMARY KEY,  -- user:{u1}:features, as in Redis
        grp       TEXT NOT NULL,     -- user:features, for scan
        event_ms  INTEGER NOT NULL,  -- event time of the values
        vals      TEXT NOT NULL      -- JSON, below
    ) WITHOUT ROWID

``vals`` is ``{feature: number}`` for a hash, ``{member: score}`` for a
sorted set, ``{feature: [float, ...]}`` for a string group.

The database runs in WAL mode, so reads never wait for a writer.  A
``write`` call is one ``BEGIN IMMEDIATE`` transaction: it takes the write
lock first, reads the held rows, applies the ordering rule
(``backing.held_after_write``) and upserts, so writers in other threads or processes
cannot interleave and an older event never replaces a newer one.  Rows
are kept past their group's TTL; reads answer them as absent and writes
replace them whole (``backing.read_held``, ``backing.held_after_write``).  sqlite3 errors
are translated into ``StoreError`` leaves here and nowhere else.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from features.errors import StoreError, StoreTimeout, StoreUnavailable
from features.keys import feature_key
from features.registry import FeatureGroup
from features.stores.backing import (
    Clock,
    HeldGroup,
    checked_values,
    entity_id_of,
    epoch_ms,
    group_label,
    held_after_write,
    read_held,
)
from features.stores.base import FeatureUpdate, ReadRequest, StoredValues
from features.timing import StageTimer

__all__ = ["SqliteStore"]

KEYS_PER_QUERY = 500
"""Keys per ``IN (...)`` lookup, well under SQLite's bound-parameter limit."""

SCAN_PAGE_ROWS = 1000
"""Rows per page of ``scan``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_groups (
    key TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    event_ms INTEGER NOT NULL,
    vals TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feature_groups_by_grp ON feature_groups (grp, key);
"""

_UPSERT = """
INSERT INTO feature_groups (key, grp, event_ms, vals) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET event_ms = excluded.event_ms, vals = excluded.vals
"""

_Row = tuple[str, int, str]


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


def _encode(held: HeldGroup) -> str:
    return json.dumps(held.values, allow_nan=False, separators=(",", ":"))


def _decode(group: FeatureGroup, event_ms: int, text: str) -> HeldGroup:
    return HeldGroup(event_ms, checked_values(group, json.loads(text)))


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
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            except sqlite3.Error:
                self._db.close()
                raise

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> list[StoredValues | None]:
        """Values for each request, in order; one query per ``KEYS_PER_QUERY`` distinct keys."""
        if timer is None:
            return self._read(requests)
        with timer.stage("backing"):
            return self._read(requests)

    def _read(self, requests: Sequence[ReadRequest]) -> list[StoredValues | None]:
        keys = [_key(request.group, request.entity_id) for request in requests]
        with _translated_errors():
            rows = self._select(keys)
        now_ms = epoch_ms(self._clock)
        answers: list[StoredValues | None] = []
        for request, key in zip(requests, keys, strict=True):
            row = rows.get(key)
            held = None if row is None else _decode(request.group, row[1], row[2])
            answers.append(read_held(request, held, now_ms))
        return answers

    def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """Apply each update unless a newer event is held, all in one transaction.

        True where applied; False where skipped as older than the held event.
        """
        if not updates:
            return []
        keys = [_key(update.group, update.entity_id) for update in updates]
        with _translated_errors(), self._transaction():
            rows = self._select(keys)
            now_ms = epoch_ms(self._clock)
            held: dict[str, HeldGroup] = {}
            upserts: dict[str, tuple[str, str, int, str]] = {}
            applied: list[bool] = []
            for update, key in zip(updates, keys, strict=True):
                if key not in held and key in rows:
                    held[key] = _decode(update.group, rows[key][1], rows[key][2])
                after = held_after_write(held.get(key), update, now_ms)
                applied.append(after is not None)
                if after is not None:
                    held[key] = after
                    upserts[key] = (key, group_label(update.group), after.event_ms, _encode(after))
            self._db.executemany(_UPSERT, upserts.values())
        return applied

    def scan(self, group: FeatureGroup) -> Iterator[FeatureUpdate]:
        """Every held entity group of ``group``, in key order, a page of rows at a time."""
        after = ""
        while True:
            with _translated_errors():
                page = self._db.execute(
                    "SELECT key, event_ms, vals FROM feature_groups "
                    "WHERE grp = ? AND key > ? ORDER BY key LIMIT ?",
                    (group_label(group), after, SCAN_PAGE_ROWS),
                ).fetchall()
            for key, event_ms, text in page:
                held = _decode(group, event_ms, text)
                yield FeatureUpdate(entity_id_of(key, group), group, held.event_ms, held.values)
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
                f"SELECT key, event_ms, vals FROM feature_groups WHERE key IN ({marks})", chunk
            ):
                rows[row[0]] = row
        return rows

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.rollback()
            raise
        self._db.execute("COMMIT")


def _key(group: FeatureGroup, entity_id: str) -> str:
    return feature_key(group.entity.name, entity_id, group.name)
