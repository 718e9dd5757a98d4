"""
Retention: events older than the configured age move to one archive
database per month, a batch at a time, without loss or duplication.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time

from daemon.store import Store
from livemon import schema

BATCH_ROWS = 5000
NS_PER_DAY = 86_400 * 10**9
_MONTH = "strftime('%Y-%m', timestamp_ns / 1e9, 'unixepoch')"


@dataclasses.dataclass
class RetentionReport:
    """What one pass moved, per archive file."""

    moved: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows moved in all."""
        return sum(self.moved.values())


class Retention:
    """Moves old events out of the unified database into monthly archives.

    Each batch is first copied into the archive and committed there, then
    counted in the archive, then deleted from the unified database in a
    second transaction.  A crash between the two leaves the rows in both
    files; the next pass copies nothing twice (unique identities) and
    deletes them.  Nothing is deleted that the archive does not hold.
    """

    def __init__(
        self, store: Store, older_than_days: float, archive_dir: str
    ) -> None:
        if older_than_days <= 0:
            raise ValueError("older_than_days must be positive")
        self.store = store
        self.older_than_days = older_than_days
        self.archive_dir = archive_dir

    def cutoff_ns(self, now_ns: int | None = None) -> int:
        """Events before this timestamp are due to move."""
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(self.older_than_days * NS_PER_DAY)

    def step(self, now_ns: int | None = None) -> tuple[str, int] | None:
        """Move one batch; return (archive path, rows), or None if done."""
        db = self.store.db
        cutoff = self.cutoff_ns(now_ns)
        row = db.execute(
            f"SELECT {_MONTH} FROM events WHERE timestamp_ns < ? "
            "ORDER BY timestamp_ns LIMIT 1",
            (cutoff,),
        ).fetchone()
        if row is None:
            return None
        month = row[0]
        path = os.path.join(self.archive_dir, f"events-{month}.db")
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM events WHERE timestamp_ns < ? "
                f"AND {_MONTH} = ? ORDER BY id LIMIT ?",
                (cutoff, month, BATCH_ROWS),
            )
        ]
        self._copy(path, ids)
        marks = ",".join("?" * len(ids))
        with self.store.atomic():
            db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        return path, len(ids)

    def run(self, now_ns: int | None = None) -> RetentionReport:
        """Move every due event (the CLI's on-demand pass)."""
        report = RetentionReport()
        while (moved := self.step(now_ns)) is not None:
            path, rows = moved
            report.moved[path] = report.moved.get(path, 0) + rows
        if report.total:
            self.store.db.execute("PRAGMA incremental_vacuum")
        return report

    def _copy(self, path: str, ids: list[int]) -> None:
        os.makedirs(self.archive_dir, exist_ok=True)
        archive = sqlite3.connect(path, isolation_level=None)
        try:
            archive.execute("PRAGMA journal_mode = WAL")
            archive.execute("PRAGMA synchronous = FULL")  # before deleting
            schema.apply_migrations(archive)
        finally:
            archive.close()
        db = self.store.db
        marks = ",".join("?" * len(ids))
        db.execute("ATTACH DATABASE ? AS archive", (path,))
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO archive.labels "
                    "SELECT * FROM main.labels"
                )
                db.execute(
                    "INSERT OR IGNORE INTO archive.events SELECT * FROM "
                    f"main.events WHERE id IN ({marks})",
                    ids,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            held = db.execute(
                "SELECT count(*) FROM main.events AS m JOIN archive.events "
                "AS a USING (epoch, lane, seq) "
                f"WHERE m.id IN ({marks})",
                ids,
            ).fetchone()[0]
        finally:
            db.execute("DETACH DATABASE archive")
        if held != len(ids):
            raise sqlite3.DatabaseError(
                f"archive {path} holds {held} of {len(ids)} rows just "
                "copied; nothing was deleted"
            )
