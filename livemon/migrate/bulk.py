"""
Bulk loading into ``events`` and ``agent_runs``: their secondary indexes
are dropped for a big migration and built once afterwards, and any left
missing by an interrupted run are rebuilt by the next one.
"""

from __future__ import annotations

import contextlib
import gc
import re
import sqlite3
from collections.abc import Iterator

from livemon.db import schema
from livemon.db.transaction import atomic

DEFER_MIN_ROWS = 100_000
"""Below this many rows, keeping the indexes up to date costs less than
building them again (measured: 1,000,000 rows insert in 8.0 s with the
three secondary indexes, 2.7 s without, plus 0.9 s to build them)."""


def secondary_indexes() -> dict[str, str]:
    """Name -> ``CREATE INDEX`` text of the non-unique indexes on
    ``events`` and ``agent_runs`` that the schema defines.

    Taken from the migrations themselves (applied to an empty database in
    memory), so an index a later migration adds is covered, and the
    definitions survive a crash without being stored anywhere.
    """
    with contextlib.closing(
        sqlite3.connect(":memory:", isolation_level=None)
    ) as db:
        schema.apply_migrations(db)
        return _indexes(db)


def _indexes(db: sqlite3.Connection) -> dict[str, str]:
    return {
        name: sql
        for name, sql in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name IN ('events', 'agent_runs') AND sql IS NOT NULL"
        )
        if not re.match(r"\s*CREATE\s+UNIQUE\b", sql, re.IGNORECASE)
    }


def should_defer(db: sqlite3.Connection, incoming_rows: int) -> bool:
    """Whether ``incoming_rows`` are worth dropping the indexes for: many
    rows, and more than are stored (rebuilding costs per row stored,
    keeping costs per row added; a second run of the same migration,
    which adds nothing, keeps them)."""
    if incoming_rows < 0:
        raise ValueError(f"incoming_rows must be >= 0, not {incoming_rows}")
    stored = schema.last_event_id(db)
    return incoming_rows >= DEFER_MIN_ROWS and incoming_rows > stored


def drop_indexes(db: sqlite3.Connection) -> list[str]:
    """Drop the schema's secondary indexes on ``events`` and
    ``agent_runs``; return their names.  Only the unique identity indexes
    stay: exactly-once needs them.

    Readers (reports, the daemon) keep working meanwhile, slower.
    """
    present = _indexes(db)
    names = [name for name in secondary_indexes() if name in present]
    with atomic(db):
        for name in names:
            db.execute(f'DROP INDEX "{name}"')
    return names


def restore_indexes(db: sqlite3.Connection) -> list[str]:
    """Build each of the schema's secondary indexes on ``events`` and
    ``agent_runs`` that is missing; return their names.

    One transaction per index, so a running daemon waits for one index
    at a time, never for all of them.  Built with a small page cache
    (``SORT_CACHE_KIB``): SQLite's sorter then sorts runs that fit the
    CPU's caches and merges them, instead of one run of the whole
    column.
    """
    present = _indexes(db)
    missing = {
        name: sql
        for name, sql in secondary_indexes().items()
        if name not in present
    }
    with _cache_size(db, SORT_CACHE_KIB if missing else None):
        for sql in missing.values():
            with atomic(db):
                db.execute(sql)
    return list(missing)


SORT_CACHE_KIB = 4096
"""Page cache while indexes are built.  Measured on 1,000,000 rows (six
indexes): 1.6-1.8 s CPU with the writer's 64 MiB cache, 1.3-1.4 s with
0.5-8 MiB; the sorter's runs spill to temporary files (in memory,
``temp_store = MEMORY``, it was slower: 1.9-2.2 s)."""


@contextlib.contextmanager
def _cache_size(db: sqlite3.Connection, kib: int | None) -> Iterator[None]:
    """``PRAGMA cache_size`` at ``kib`` KiB in the block (unchanged when
    None), the connection's own size again however it ends."""
    if kib is None:
        yield
        return
    (previous,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size = {int(previous)}")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk load.

    A chunk of rows is a million small tuples and floats that hold no
    reference cycles (refcounting frees them), yet each one counts toward
    the collector's next pass, and every pass walks the whole heap:
    measured here, 0.5-1.0 s of a 9 s migration of 1,000,000 rows.  The
    collector's previous state comes back however the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
