"""
The daemon's one write connection to the unified SQLite database.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.exceptions import DatabaseCorrupt
from livemon import schema
from livemon.record import (
    ALERT_ACTIONS,
    LIST_FIELDS,
    NO_LABEL,
    RECORD_DTYPE,
    FeedbackAction,
    list_label_id,
)
from ringbuf import Batch

BUSY_TIMEOUT_MS = 1000
PAGE_BYTES = 16384
CACHE_KIB = 65536
CHECKPOINT_BUSY_TIMEOUT_MS = 50

_EVENT_COLUMNS = (*schema.IDENTITY_COLUMNS, *schema.event_columns())
_INSERT_EVENTS = (
    f"INSERT OR IGNORE INTO events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
_FEEDBACK_COLUMNS = (
    "epoch, lane, seq, timestamp_ns, pid, action, subject, old_value, "
    "new_value, statistic, threshold, samples, window_records, message"
)
_INSERT_FEEDBACK = {
    table: f"INSERT OR IGNORE INTO {table} ({_FEEDBACK_COLUMNS}) "
    f"VALUES ({', '.join('?' * 14)})"
    for table in ("alerts", "adjustments")
}
_INSERT_LABELS = "INSERT OR IGNORE INTO labels (label_id, text) VALUES (?, ?)"
# A list label is rewritten when a name it lacked has arrived since.
_REPLACE_LABELS = (
    "INSERT OR REPLACE INTO labels (label_id, text) VALUES (?, ?)"
)


def event_rows(
    epoch: int, batch: Batch, lists: ListLabels
) -> Iterator[tuple[Any, ...]]:
    """Turn a batch of ``RECORD_DTYPE`` records into ``events`` rows.

    Columns are converted whole by numpy (``tolist``) and zipped, so no
    Python code runs per field of per record; each list of label ids
    becomes the id of its list label (see ``ListLabels``).
    """
    records = batch.records
    columns: list[Iterable[Any]] = [
        itertools.repeat(epoch, len(records)),
        itertools.repeat(batch.lane, len(records)),
        range(batch.first_seq, batch.end_seq),
    ]
    for name in RECORD_DTYPE.names or ():
        if name in LIST_FIELDS:
            columns.append(lists.column(records[name]))
        else:
            columns.append(records[name].tolist())
    return zip(*columns, strict=True)


class ListLabels:
    """Stores each distinct list of label ids once, as a JSON-array label.

    Lists are few (combinations of agents and domains), so the work is per
    distinct list per batch, found with one vectorized ``np.unique``.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._known: dict[bytes, int] = {}
        self._texts: dict[int, str] = {}
        self._missing: set[int] = set()  # not in the database (yet)
        self.new: list[tuple[int, str]] = []

    def learn(self, rows: Iterable[tuple[int, str]]) -> None:
        """Remember label texts written in this batch."""
        for label, text in rows:
            self._texts[label] = text
            self._missing.discard(label)

    def column(self, ids: npt.NDArray[np.int64]) -> list[int]:
        """The list label id of each row of ``ids`` (int64[n, k])."""
        if not len(ids):
            return []
        distinct, inverse = _distinct_rows(ids)
        labels = np.empty(len(distinct), np.int64)
        for j, row in enumerate(distinct):
            key = row.tobytes()
            label = self._known.get(key)
            if label is None:
                label = self._add(row.tolist(), key)
            labels[j] = label
        result: list[int] = labels[inverse.reshape(-1)].tolist()
        return result

    def _add(self, ids: list[int], key: bytes) -> int:
        label = list_label_id(ids)
        if label == NO_LABEL:
            self._known[key] = label
            return label
        texts = [self._text(i) for i in ids if i]
        known = [t for t in texts if t is not None]
        self.new.append(
            (
                label,
                json.dumps(known, ensure_ascii=False, separators=(",", ":")),
            )
        )
        if len(known) == len(texts):
            self._known[key] = label  # complete: never written again
        return label

    def _text(self, label: int) -> str | None:
        text = self._texts.get(label)
        if text is None and label not in self._missing:
            row = self._db.execute(
                "SELECT text FROM labels WHERE label_id = ?", (label,)
            ).fetchone()
            if row is None:
                self._missing.add(label)
            else:
                text = self._texts[label] = row[0]
        return text


def feedback_rows(
    epoch: int, batch: Batch
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Split a FEEDBACK_DTYPE batch into ``alerts`` and ``adjustments``."""
    records = batch.records
    seqs = range(batch.first_seq, batch.end_seq)
    rows: dict[str, list[tuple[Any, ...]]] = {"alerts": [], "adjustments": []}
    for seq, r in zip(seqs, records.tolist(), strict=True):
        action = FeedbackAction(r[2])
        table = "alerts" if action in ALERT_ACTIONS else "adjustments"
        rows[table].append(
            (epoch, batch.lane, seq, r[0], r[1], action.name.lower(), *r[3:])
        )
    return list(rows.items())


def label_rows(records: npt.NDArray[np.void]) -> list[tuple[int, str]]:
    """Turn ``LABEL_DTYPE`` records into ``(label_id, text)`` rows."""
    return [
        (label, text[:length].tobytes().decode(errors="replace"))
        for label, length, text in zip(
            records["label_id"].tolist(),
            records["length"].tolist(),
            records["text"],
            strict=True,
        )
    ]


def _distinct_rows(
    ids: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """Distinct rows of ``ids`` and, per row, the index of its distinct row.

    ``np.unique(axis=0)`` sorts rows as structured values (~50 ms for 20k
    rows here); hashing each row to one u64 and sorting those is ~20x
    faster.  A hash collision is caught by the check and falls back.
    """
    with np.errstate(over="ignore"):
        keys = np.zeros(len(ids), np.uint64)
        for column in ids.T.view(np.uint64):
            keys = (keys ^ column) * np.uint64(0x9E3779B97F4A7C15)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    distinct = ids[first]
    if not np.array_equal(distinct[inverse], ids):
        distinct, inverse = np.unique(ids, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)


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
        create_file(path, mode)
        db = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Measured here: 16 KiB pages and a 64 MiB cache take inserts
            # into the five b-trees of events from ~65k to ~95k rows/s.
            # (page_size only applies to a new, empty database.)
            db.execute(f"PRAGMA page_size = {PAGE_BYTES}")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise sqlite3.OperationalError(f"{path}: cannot enable WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise DatabaseCorrupt(
                    f"{path} is damaged ({'; '.join(problems[:3])}): "
                    "restore it from a backup or move it aside; the daemon "
                    "will not write to it"
                )
            schema.apply_migrations(db)
        except sqlite3.OperationalError:
            db.close()
            raise  # locked, read-only, full: trouble that may pass
        except sqlite3.DatabaseError as exc:
            db.close()
            raise DatabaseCorrupt(
                f"{path} is damaged ({exc}): restore it from a backup or "
                "move it aside; the daemon will not write to it"
            ) from exc
        except BaseException:
            db.close()
            raise
        self._db = db
        self._depth = 0
        self._lists = ListLabels(db)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (for reads in tests and tools)."""
        if self._db is None:
            raise ValueError(f"store {self.path} is closed")
        return self._db

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested calls become savepoints."""
        db = self.db
        depth = self._depth
        db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT s{depth}")
        self._depth += 1
        try:
            yield db
        except BaseException:
            self._depth = depth
            if depth == 0:
                db.execute("ROLLBACK")
            else:
                db.execute(f"ROLLBACK TO s{depth}")
                db.execute(f"RELEASE s{depth}")
            raise
        self._depth = depth
        db.execute("COMMIT" if depth == 0 else f"RELEASE s{depth}")

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
            for batch in labels:
                rows = label_rows(batch.records)
                db.executemany(_INSERT_LABELS, rows)
                self._lists.learn(rows)
            inserted = 0
            for batch in events:
                before = db.total_changes
                db.executemany(
                    _INSERT_EVENTS, event_rows(epoch, batch, self._lists)
                )
                inserted += db.total_changes - before
            db.executemany(_REPLACE_LABELS, self._lists.new)
            self._lists.new.clear()
            feedback_epoch, feedback_batches = feedback
            for batch in feedback_batches:
                for table, rows in feedback_rows(feedback_epoch, batch):
                    db.executemany(_INSERT_FEEDBACK[table], rows)
            return inserted

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


def create_file(path: str, mode: int) -> None:
    """Create an empty database file with ``mode`` (and its directory).

    Raises:
        OSError: the directory is not writable (read-only, permissions).
    """
    if os.path.exists(path):
        return
    parent = pathlib.Path(path).parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o700 | (mode & 0o070))
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        os.chmod(path, mode)  # the umask may have narrowed it
