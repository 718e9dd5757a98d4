"""
The daemon's one write connection to the unified SQLite database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

from daemon.exceptions import DatabaseCorrupt
from livemon.db.rows import ListLabels, insert_records
from livemon.db.transaction import atomic
from livemon.db.writer import BUSY_TIMEOUT_MS, open_writer
from ringbuf import Batch

CHECKPOINT_BUSY_TIMEOUT_MS = 50


class Store:
    """The unified database, opened for writing: WAL, migrated, checked.

    Args:
        path: the database file (created with ``mode`` if missing).
        synchronous: ``NORMAL`` (default) or ``FULL``.
        mode: permission bits for a new database file.

    Raises:
        DatabaseCorrupt: ``PRAGMA quick_check`` found damage.
        sqlite3.Error: the file cannot be opened or migrated.
    """

    _db: sqlite3.Connection | None = None

    def __init__(
        self, path: str, *, synchronous: str = "NORMAL", mode: int = 0o600
    ) -> None:
        self.path = path
        self.mode = mode
        try:
            db = open_writer(path, mode=mode, synchronous=synchronous)
        except sqlite3.OperationalError:
            raise  # locked, read-only, full: trouble that may pass
        except sqlite3.DatabaseError as exc:
            raise DatabaseCorrupt(
                f"{path} is damaged ({exc}): restore it from a backup or "
                "move it aside; the daemon will not write to it"
            ) from exc
        self._db = db
        self._lists = ListLabels(db)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (for reads in tests and tools)."""
        if self._db is None:
            raise ValueError(f"store {self.path} is closed")
        return self._db

    def atomic(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One transaction; nested calls become savepoints."""
        return atomic(self.db)

    def write(
        self,
        epoch: int,
        labels: list[Batch],
        events: list[Batch],
        feedback: tuple[int, list[Batch]] = (0, []),
    ) -> int:
        """Insert labels, events and feedback in one transaction.

        Args:
            epoch: the events ring's epoch (part of each event's identity).
            labels: LABEL_DTYPE batches.
            events: RECORD_DTYPE batches.
            feedback: the feedback ring's epoch and FEEDBACK_DTYPE batches,
                stored as ``alerts`` or ``adjustments``.

        Records already stored (same epoch, lane, seq) are ignored, so a
        batch replayed after a crash adds nothing.  Returns events inserted.
        """
        with self.atomic() as db:
            return insert_records(
                db, self._lists, epoch, labels, events, feedback
            )

    def add_health(self, **values: Any) -> None:
        """Append one ``health`` row (column names as keywords)."""
        names = ", ".join(values)
        marks = ", ".join("?" * len(values))
        with self.atomic() as db:
            db.execute(
                f"INSERT INTO health ({names}) VALUES ({marks})",
                tuple(values.values()),
            )

    def checkpoint(self) -> tuple[int, int, int]:
        """Checkpoint and truncate the WAL, waiting for readers only briefly.

        Busy readers starve SQLite's automatic checkpoints and the WAL
        grows without bound; a TRUNCATE checkpoint with a short busy
        timeout bounds it without stalling the writer for long.  Returns
        SQLite's (busy, wal pages, pages checkpointed).
        """
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
        try:
            row = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return (int(row[0]), int(row[1]), int(row[2]))

    def optimize(self) -> None:
        """Let SQLite refresh the statistics its query planner uses."""
        self.db.execute("PRAGMA optimize")

    def size_bytes(self) -> int:
        """Size of the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(self.path + suffix)
        return total

    def close(self) -> None:
        """Optimize and close the connection. Idempotent."""
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA optimize")
        self._db.close()
        self._db = None
