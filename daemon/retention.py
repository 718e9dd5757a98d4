"""
Retention: events and agent runs older than the configured age move to
one archive database per month, a batch at a time, without loss or
duplication, and the rollup hours they leave are rebuilt on both sides.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

from daemon.outbox import lowest_marks
from daemon.store import Store
from livemon.db import agent_rollup, rollup
from livemon.db.transaction import atomic
from livemon.db.writer import open_writer

BATCH_ROWS = 5000
DAEMON_SHARE = 0.03  # of the daemon's time that retention may take
NS_PER_DAY = 86_400 * 10**9
TABLES = ("events", "agent_runs")
"""What moves, in this order; each table is its own outbox source."""


@dataclasses.dataclass
class RetentionReport:
    """What one pass moved, per archive file."""

    moved: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows moved in all."""
        return sum(self.moved.values())


class Retention:
    """Moves old events and agent runs out of the unified database into
    monthly archives (a month's archive holds both).

    Each batch is first copied into the archive and committed there, then
    counted in the archive, then deleted from the unified database in a
    second transaction.  A crash between the two leaves the rows in both
    files; the next pass copies nothing twice (unique identities) and
    deletes them.  Nothing is deleted that the archive does not hold,
    nor what a destination in ``sinks`` has not shipped yet.
    """

    def __init__(
        self,
        store: Store,
        older_than_days: float,
        archive_dir: str,
        batch_rows: int = BATCH_ROWS,
        sinks: Sequence[str] | Mapping[str, Sequence[str]] = (),
    ) -> None:
        """Move rows older than ``older_than_days`` into ``archive_dir``.

        Args:
            sinks: the destinations whose marks hold rows back: per table
                (``{"events": [...], "agent_runs": [...]}``, the ones
                taking that outbox source), or one list for every table.
        """
        if older_than_days <= 0 or batch_rows < 1:
            raise ValueError(
                "older_than_days must be positive, batch_rows at least 1"
            )
        self.batch_rows = batch_rows
        self._prepared: set[str] = set()
        self._resume_at = 0.0
        self.store = store
        self.older_than_days = older_than_days
        self.archive_dir = archive_dir
        self.sinks = {
            table: tuple(
                sinks.get(table, ()) if isinstance(sinks, Mapping) else sinks
            )
            for table in TABLES
        }

    def cutoff_ns(self, now_ns: int | None = None) -> int:
        """Events before this timestamp are due to move."""
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(self.older_than_days * NS_PER_DAY)

    def step(self, now_ns: int | None = None) -> tuple[str, int] | None:
        """Move one batch; return (archive path, rows), or None if done.

        Events first, then agent runs: each of their own table, below the
        same cutoff, into the same monthly archive.
        """
        for table in TABLES:
            moved = self._step_table(table, self.cutoff_ns(now_ns))
            if moved is not None:
                return moved
        return None

    def _step_table(self, table: str, cutoff: int) -> tuple[str, int] | None:
        db = self.store.db
        shipped = self._shipped_id(db, table)
        row = db.execute(
            f"SELECT min(timestamp_ns) FROM {table} WHERE timestamp_ns < ? "
            "AND id <= ?",
            (cutoff, shipped),
        ).fetchone()
        if row[0] is None:
            return None
        month_start, month_end = _month_of(row[0])
        path = os.path.join(
            self.archive_dir, f"events-{_month_name(month_start)}.db"
        )
        # A range on the timestamp index: the oldest rows of that month.
        rows = db.execute(
            f"SELECT id, timestamp_ns FROM {table} WHERE timestamp_ns >= ? "
            "AND timestamp_ns < ? AND id <= ? ORDER BY timestamp_ns LIMIT ?",
            (month_start, min(month_end, cutoff), shipped, self.batch_rows),
        ).fetchall()
        ids = [r[0] for r in rows]
        span = (rows[0][1], rows[-1][1])
        self._copy(path, ids, span, table)
        marks = ",".join("?" * len(ids))
        with self.store.atomic(grows=False):  # it makes room
            moved = db.execute(
                f"DELETE FROM {table} WHERE id IN ({marks})", ids
            ).rowcount
            _rebuild_hours(db, table, span)
        return path, moved

    def _shipped_id(self, db: sqlite3.Connection, table: str) -> int:
        """The highest id of ``table`` that may move: every destination
        taking it shipped it (its outbox source has the table's name).

        Below the newest row too, sinks or not: deleting it would let
        SQLite hand its id (and lower ones) out again, to rows a
        destination's mark has passed already, and to rows that would
        then collide with their namesakes in the month's archive.
        """
        lowest = lowest_marks(db, self.sinks[table], table)
        newest = db.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
        below_newest = (newest or 0) - 1
        return below_newest if lowest is None else min(lowest, below_newest)

    def step_within(self, share: float, now_ns: int | None = None) -> bool:
        """Move a batch unless that would take more than ``share`` of the
        time; return whether work may remain.

        The daemon calls this every loop turn: a busy drain keeps at least
        ``1 - share`` of the time, while old rows keep moving.
        """
        if time.monotonic() < self._resume_at:
            return True
        started = time.monotonic()
        moved = self.step(now_ns)
        spent = time.monotonic() - started
        self._resume_at = time.monotonic() + spent * (1 - share) / share
        return moved is not None

    def run(
        self,
        now_ns: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RetentionReport:
        """Move every due event and agent run (the CLI's on-demand pass).

        Args:
            progress: told (rows moved, rows due) after each batch.
        """
        report = RetentionReport()
        due = 0
        if progress is not None:
            db = self.store.db
            due = sum(
                db.execute(
                    f"SELECT count(*) FROM {table} WHERE timestamp_ns < ? "
                    "AND id <= ?",
                    (self.cutoff_ns(now_ns), self._shipped_id(db, table)),
                ).fetchone()[0]
                for table in TABLES
            )
        while (moved := self.step(now_ns)) is not None:
            path, rows = moved
            report.moved[path] = report.moved.get(path, 0) + rows
            if progress is not None:
                progress(report.total, max(due, report.total))
        if report.total:
            self.store.db.execute("PRAGMA incremental_vacuum")
        return report

    def _copy(
        self,
        path: str,
        ids: list[int],
        span: tuple[int, int],
        table: str = "events",
    ) -> None:
        if path not in self._prepared:
            os.makedirs(self.archive_dir, exist_ok=True)
            open_writer(path, mode=self.store.mode, check=False).close()
            self._prepared.add(path)
        db = self.store.db
        marks = ",".join("?" * len(ids))
        db.execute("ATTACH DATABASE ? AS archive", (path,))
        try:
            # Durable in the archive before anything is deleted here.
            db.execute("PRAGMA archive.synchronous = FULL")
            with atomic(db):
                for texts in ("labels", "list_members"):
                    db.execute(
                        f"INSERT OR IGNORE INTO archive.{texts} "
                        f"SELECT * FROM main.{texts}"
                    )
                db.execute(
                    f"INSERT OR IGNORE INTO archive.{table} SELECT * FROM "
                    f"main.{table} WHERE id IN ({marks})",
                    ids,
                )
            # Of the rows still here (another pass, the daemon's or a
            # `retain`, may have moved some since they were chosen), in one
            # read: those the archive holds.
            present, held = db.execute(
                f"SELECT count(*), count(a.seq) FROM main.{table} AS m "
                f"LEFT JOIN archive.{table} AS a USING (epoch, lane, seq) "
                f"WHERE m.id IN ({marks})",
                ids,
            ).fetchone()
        finally:
            db.execute("DETACH DATABASE archive")
        if held != present:
            raise sqlite3.DatabaseError(
                f"archive {path} holds {held} of {present} rows just "
                "copied; nothing was deleted"
            )
        # The archive answers reports too; a crash before this line is
        # healed by the next pass, which copies the same rows again.
        archive = sqlite3.connect(path, isolation_level=None)
        try:
            with atomic(archive):
                _rebuild_hours(archive, table, span)
        finally:
            archive.close()


def _rebuild_hours(
    db: sqlite3.Connection, table: str, span: tuple[int, int]
) -> None:
    """Recompute the rollups of ``table`` for every hour touching
    ``span`` from the rows stored now.  The caller owns the transaction.
    """
    if table == "events":
        rollup.rebuild_hours(db, *span)
        return
    rollup.ensure_math(db)
    first, last = span[0] // rollup.NS_PER_HOUR, span[1] // rollup.NS_PER_HOUR
    hours = {
        "lo": first * rollup.NS_PER_HOUR,
        "hi": (last + 1) * rollup.NS_PER_HOUR,
    }
    where = "a.timestamp_ns >= :lo AND a.timestamp_ns < :hi"
    selects = (
        agent_rollup.AGENT_ROLLUP_SELECT,
        agent_rollup.AGENT_LATENCY_SELECT,
    )
    for name, select in zip(
        agent_rollup.AGENT_ROLLUP_TABLES, selects, strict=True
    ):
        db.execute(
            f"DELETE FROM {name} WHERE hour BETWEEN ? AND ?", (first, last)
        )
        db.execute(f"INSERT INTO {name} {select.format(where=where)}", hours)


def _month_of(timestamp_ns: int) -> tuple[int, int]:
    """The UTC calendar month holding ``timestamp_ns``: [start, end) in ns."""
    moment = datetime.datetime.fromtimestamp(timestamp_ns / 1e9, datetime.UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    return int(start.timestamp()) * 10**9, int(end.timestamp()) * 10**9


def _month_name(start_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(start_ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m")
