"""
The one way to open the unified database for writing: the daemon's store,
``livemon migrate`` and retention's archives all get the same page size,
vacuum mode, journal and permissions.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3

from livemon.config import dir_mode
from livemon.db import schema

BUSY_TIMEOUT_MS = 1000
PAGE_BYTES = 16384
CACHE_KIB = 65536


def create_file(path: str, mode: int) -> None:
    """Create an empty database file with ``mode`` (and its directory).

    The directory gets ``dir_mode(mode)``: owner-only, or enterable by
    the group that may read the file.

    Raises:
        OSError: the directory is not writable (read-only, permissions).
    """
    if os.path.exists(path):
        return
    parent = pathlib.Path(path).parent
    parent.mkdir(parents=True, exist_ok=True, mode=dir_mode(mode))
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        os.chmod(path, mode)  # the umask may have narrowed it


def open_writer(
    path: str,
    *,
    mode: int = 0o600,
    synchronous: str = "NORMAL",
    check: bool = True,
) -> sqlite3.Connection:
    """Open ``path`` for writing: created if missing, WAL, migrated.

    Args:
        path: the database file.
        mode: permission bits of a new file.
        synchronous: SQLite ``synchronous``, ``NORMAL`` or ``FULL``.
        check: run ``PRAGMA quick_check`` first (seconds on gigabytes).

    Returns:
        An autocommit connection (``isolation_level=None``): write
        through ``livemon.db.transaction.atomic``.

    Raises:
        sqlite3.OperationalError: locked, read-only or full; may pass.
        sqlite3.DatabaseError: the file is not SQLite or is damaged.
        OSError: the file or its directory cannot be created.
    """
    create_file(path, mode)
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Only for a new, empty file, the one they apply to: on any other,
        # setting auto_vacuum commits a page each open (a WAL frame each
        # retry of a daemon whose disk is full).
        if db.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Measured here: 16 KiB pages and a 64 MiB cache take inserts
            # into the five b-trees of events from ~65k to ~95k rows/s.
            db.execute(f"PRAGMA page_size = {PAGE_BYTES}")
            # Space freed by retention is given back by incremental_vacuum.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot enable WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        if check:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
        schema.apply_migrations(db)
    except BaseException:
        db.close()
        raise
    return db
