"""
The one way to write a transaction: ``atomic(db)``, nested as savepoints.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator

_savepoints = itertools.count()


@contextlib.contextmanager
def atomic(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction on autocommit ``db``; nested calls are savepoints.

    Commits when the block ends, rolls back (only the savepoint, when
    nested) when it raises.  ``BEGIN IMMEDIATE`` takes the write lock at
    once, so a busy database fails here, before any work is done.
    """
    nested = db.in_transaction
    name = f"livemon_{next(_savepoints)}"
    db.execute(f"SAVEPOINT {name}" if nested else "BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        # SQLite may have rolled back by itself (a full disk, an I/O
        # error): a second ROLLBACK would hide the error that matters.
        if db.in_transaction:
            db.execute(f"ROLLBACK TO {name}" if nested else "ROLLBACK")
            if nested:
                db.execute(f"RELEASE {name}")
        raise
    if nested:
        db.execute(f"RELEASE {name}")
        return
    try:
        db.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (SQLITE_BUSY, a full disk) may leave the
        # transaction open: the next atomic() would nest in it and its
        # work never commit, while the caller believes it failed.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
