"""
The daemon's one write connection to the unified SQLite database, and the
checks that it still writes the file at the configured path, undamaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from typing import Any

from daemon.exceptions import (
    DatabaseCorrupt,
    DatabaseFull,
    DatabaseGone,
    DatabaseReplaced,
    ForeignDatabase,
    StartRefused,
)
from livemon.db import schema
from livemon.db.rows import ListLabels, insert_records
from livemon.db.transaction import atomic
from livemon.db.writer import BUSY_TIMEOUT_MS, open_writer
from ringbuf import Batch

logger = logging.getLogger("livemon.daemon")

CHECKPOINT_BUSY_TIMEOUT_MS = 50
SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
# SQLite's primary result codes for "this file is damaged / not SQLite".
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged.

    Only SQLite's own CORRUPT and NOTADB codes (and ``DatabaseCorrupt``)
    count: a locked, read-only or full database is trouble that passes,
    and a constraint or programming error is not the file's fault.
    """
    if isinstance(exc, DatabaseCorrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and code is not None
        and code & 0xFF in _DAMAGE_CODES
    )


def check_database_path(path: str) -> None:
    """Refuse what can never become livemon's database.

    A missing file, an empty one, an empty SQLite database or a livemon
    database pass.

    Raises:
        StartRefused: the path is a directory, a device, or a file that
            is not SQLite; or it cannot be read and written.
        ForeignDatabase: an SQLite database with someone else's tables.
        sqlite3.OperationalError: it cannot be inspected now (locked).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except PermissionError as exc:
        raise StartRefused(_denied(path, exc)) from exc
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a file"
        raise StartRefused(
            f"--db {path} is {kind}: name a database file (it is created "
            "if missing)"
        )
    # A read-only filesystem is trouble that passes (retried, reported);
    # a file this user may not write is not.
    read_only = os.statvfs(path).f_flag & os.ST_RDONLY
    if not os.access(path, os.R_OK | os.W_OK) and not read_only:
        raise StartRefused(
            _denied(path, PermissionError(13, "not readable and writable"))
        )
    if info.st_size == 0:
        return
    with open(path, "rb") as file:
        head = file.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise StartRefused(
            f"{path} is not an SQLite database (it holds other data): name "
            "another file with --db, or move this one away"
        )
    check_is_livemon(path)


def check_is_livemon(path: str) -> None:
    """Refuse an SQLite database that has tables and none of livemon's.

    Raises:
        ForeignDatabase: someone else's database; livemon adds nothing.
        sqlite3.DatabaseError: it cannot be read (damaged, locked).
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    try:
        tables = {
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
    finally:
        db.close()
    if tables and schema.MIGRATIONS_TABLE not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise ForeignDatabase(
            f"{path} is another program's SQLite database (tables {shown}):"
            " livemon will not add its tables to it; name another file "
            "with --db"
        )


def file_identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of ``path``: which file the path names now.

    Raises:
        DatabaseGone: nothing is at ``path``.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DatabaseGone(
            f"database {path} was deleted while the daemon had it open"
        ) from None
    return info.st_dev, info.st_ino


def _denied(path: str, exc: OSError) -> str:
    return (
        f"permission denied on {path} ({exc.strerror}): run the daemon as "
        "the user that owns it (see ls -l), give that user the group "
        "(LIVEMON_GROUP), or name another --db"
    )


class Store:
    """The unified database, opened for writing: WAL, migrated, checked.

    Args:
        path: the database file (created with ``mode`` if missing).
        synchronous: ``NORMAL`` (default) or ``FULL``.
        mode: permission bits for a new database file.
        min_free_bytes: free space kept beyond the WAL before adding
            (see ``keep_checkpointable``).

    Raises:
        DatabaseCorrupt: ``PRAGMA quick_check`` found damage.
        ForeignDatabase: another program's database; livemon adds
            nothing to it.
        sqlite3.Error: the file cannot be opened or migrated.
    """

    _db: sqlite3.Connection | None = None
    _fd = -1

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        mode: int = 0o600,
        min_free_bytes: int = 0,
    ) -> None:
        self.path = path
        self.mode = mode
        self.min_free_bytes = min_free_bytes
        try:
            check_is_livemon(path)
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
        # SQLite's own name for the file (a symlink resolved): the WAL is
        # beside the file, not beside the link.
        main = db.execute("PRAGMA database_list").fetchone()[2]
        self.file: str = main or path
        self._wal = self.file + "-wal"
        # The file this store writes: a path that names another file (or
        # none) later must never get a commit into the old one.
        self.identity = file_identity(path)
        # Read the header through a descriptor held open: closing any
        # descriptor of the file would drop SQLite's POSIX locks on it.
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (for reads in tests and tools)."""
        if self._db is None:
            raise ValueError(f"store {self.path} is closed")
        return self._db

    def atomic(
        self, *, grows: bool = True
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One transaction; nested calls become savepoints.

        One that may add pages (``grows``, the default) first makes sure
        the WAL stays checkpointable (``keep_checkpointable``).  One that
        only deletes passes False: it may run where adding may not, and
        it makes room.  One that fails (its COMMIT too: a full disk)
        leaves the agent-list cache empty, since the rollback undid the
        lists it learned as stored: a list it still called stored would
        never be written, and later events would name it in vain.
        """
        if grows and not self.db.in_transaction:
            self.keep_checkpointable()
        return self._forgetting_lists_on_failure()

    @contextlib.contextmanager
    def _forgetting_lists_on_failure(self) -> Iterator[sqlite3.Connection]:
        try:
            with atomic(self.db) as db:
                yield db
        except BaseException:
            if self._db is not None:  # closed: a reopened store starts afresh
                self._lists = ListLabels(self._db)
            raise

    def keep_checkpointable(self) -> None:
        """Refuse to add where the WAL could no longer be checkpointed.

        A checkpoint copies the WAL's pages into the database file, which
        may take up to the WAL's size in new blocks, and only then can the
        WAL start over.  A WAL grown into the filesystem's last bytes (a
        reader pinned it while the daemon wrote on; a transaction failed
        on the full disk and left its frames behind) can never be
        checkpointed, and every later commit fails though space came
        back.  So before adding, the WAL's size plus ``min_free_bytes``
        must be free; short of that a checkpoint runs first, and still
        short, nothing is added.

        Raises:
            DatabaseFull: too little room, even after a checkpoint.
            DatabaseGone, DatabaseReplaced, DatabaseCorrupt: see ``verify``.
            sqlite3.OperationalError: the checkpoint failed.
        """
        if self._shortage() is None:
            return
        self.verify()  # before a checkpoint writes into the file
        busy = self.checkpoint()[0]
        shortage = self._shortage()
        if shortage is None:
            return
        free, wal = (n / 2**20 for n in shortage)
        held = (
            "end the long read transaction holding the WAL (a report, an "
            "sqlite3 shell) or free space"
            if busy
            else "free space"
        )
        raise DatabaseFull(
            f"{free:.1f} MiB free beside {self.path}, WAL {wal:.1f} MiB: "
            f"the daemon adds only with the WAL's size plus "
            f"db_min_free_bytes ({self.min_free_bytes / 2**20:.1f} MiB) "
            f"free, so that a checkpoint can always run; {held}, the "
            "records wait in the ring (a db_min_free_bytes under twice a "
            "transaction's WAL risks a WAL no checkpoint can move)"
        )

    def _shortage(self) -> tuple[int, int] | None:
        """(free bytes, WAL bytes) when short of the WAL plus
        ``min_free_bytes``; None when there is room (or no telling)."""
        try:
            fs = os.fstatvfs(self._fd)
        except OSError:
            return None  # cannot tell: SQLite's own errors say the rest
        try:
            wal = os.stat(self._wal).st_size
        except FileNotFoundError:
            wal = 0
        free = fs.f_bavail * fs.f_frsize
        return (free, wal) if free < wal + self.min_free_bytes else None

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
            inserted = insert_records(
                db, self._lists, epoch, labels, events, feedback
            )
            self.verify()  # raising rolls back: nothing into the void
        # Moved between the check and the commit: the caller must not
        # advance the tails, so the batch is replayed into the new file.
        self.check_identity()
        return inserted

    def check_identity(self) -> None:
        """Check that the path still names the file this store writes.

        Raises:
            DatabaseGone: the file was deleted.
            DatabaseReplaced: another file is at the path now.
        """
        if file_identity(self.path) != self.identity:
            raise DatabaseReplaced(
                f"database {self.path} was replaced by another file while "
                "the daemon had it open"
            )

    def verify(self) -> None:
        """Cheap checks that the file is still ours and whole.

        The identity and SQLite's magic at the start; ``checkpoint`` checks
        the length.  Garbage elsewhere is for ``quick_check`` (see
        ``integrity_problems``), or SQLite finds it when it reads there.

        Raises:
            DatabaseGone, DatabaseReplaced: see ``check_identity``.
            DatabaseCorrupt: overwritten or truncated.
        """
        self.check_identity()  # so the descriptor reads what the path names
        header = os.pread(self._fd, _HEADER_BYTES, 0)
        # SQLite writes the header when it creates the file and never
        # removes it: a file without one was overwritten or truncated.
        if len(header) < _HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
            raise DatabaseCorrupt(
                f"{self.path} was truncated or overwritten under the daemon "
                f"(its first {len(header)} bytes are no SQLite header)"
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

        Raises:
            DatabaseGone, DatabaseReplaced: see ``check_identity``.
            DatabaseCorrupt: the file is shorter than its pages.
        """
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
        try:
            row = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if row[0] == 0:
            self._check_length()
        return (int(row[0]), int(row[1]), int(row[2]))

    def _check_length(self) -> None:
        # Only after a complete checkpoint must the file hold every page
        # (before, the WAL may hold the tail: a checkpoint cut short by
        # a full disk leaves a short file that is not damaged).
        # A file put at the path meanwhile is a replacement, not damage to
        # ours: said as such (the caller treats it so), and the length
        # measured is our descriptor's, never the newcomer's.
        self.check_identity()
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        page_bytes = self.db.execute("PRAGMA page_size").fetchone()[0]
        size = os.fstat(self._fd).st_size
        if size < pages * page_bytes:
            raise DatabaseCorrupt(
                f"{self.path} was truncated under the daemon: {size} bytes "
                f"where {pages} pages of {page_bytes} were just written"
            )

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

    def integrity_problems(self) -> list[str]:
        """``PRAGMA quick_check`` on a fresh read-only connection.

        A fresh connection reads the disk, where this store's page cache
        would show pages it still remembers.  Seconds on gigabytes: the
        service runs it in a thread.  Returns [] when the file is sound.

        Raises:
            sqlite3.OperationalError: it could not be read now (locked).
        """
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [row[0] for row in db.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise
            return [str(exc)]
        finally:
            db.close()
        return [] if rows == ["ok"] else rows[:3]

    def close(self) -> None:
        """Optimize and close the connection. Idempotent."""
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA optimize")
        self._db.close()
        self._db = None
        if self._fd >= 0:  # after SQLite let go of its locks
            os.close(self._fd)
            self._fd = -1


class IntegrityCheck(threading.Thread):
    """``Store.integrity_problems`` off the drain loop (SQLite lets go
    of the GIL while it reads)."""

    def __init__(self, store: Store) -> None:
        super().__init__(name="livemon-quick-check", daemon=True)
        self.store = store
        self.problems: list[str] = []

    def run(self) -> None:
        try:
            self.problems = self.store.integrity_problems()
        except (sqlite3.Error, OSError) as exc:  # locked or gone: next time
            logger.info("quick_check skipped: %s", exc)
