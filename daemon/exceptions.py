"""
Exceptions raised by the daemon: one base, each subclass also a built-in
category.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "DaemonError",
    "DatabaseCorrupt",
    "DatabaseFull",
    "DatabaseGone",
    "DatabaseMoved",
    "DatabaseReplaced",
    "ForeignDatabase",
    "NotRunning",
    "StartFailed",
    "StartRefused",
    "StopTimedOut",
]


class DaemonError(Exception):
    """Base of every error the daemon raises."""


class AlreadyRunning(DaemonError, RuntimeError):
    """Another daemon already drains this ring or writes this database."""


class NotRunning(DaemonError, ProcessLookupError):
    """No live daemon matches the pidfile."""


class StartFailed(DaemonError, RuntimeError):
    """A detached daemon exited or did not become ready in time."""


class StopTimedOut(DaemonError, TimeoutError):
    """The daemon did not exit in time after SIGTERM (it may still drain)."""


class DatabaseCorrupt(DaemonError, ValueError):
    """``PRAGMA quick_check`` failed: the daemon refuses to write.

    Restore the database from a backup (``livemon backup``), or move it
    aside so a fresh one is created.
    """


class DatabaseFull(DaemonError, OSError):
    """The database's filesystem lacks the room the daemon keeps free.

    Nothing is added until there is room again (the records stay in the
    ring): free space on that filesystem, or lower ``db_min_free_bytes``.
    """


class DatabaseMoved(DaemonError, OSError):
    """The configured path no longer names the file the daemon opened.

    Nothing is committed into a file that is gone from its path: the
    daemon closes it and opens the path again.
    """


class DatabaseGone(DatabaseMoved):
    """The database file was deleted (or renamed away) while open."""


class DatabaseReplaced(DatabaseMoved):
    """Another file now sits at the database's path."""


class ForeignDatabase(DaemonError, ValueError):
    """The path holds an SQLite database that is not livemon's.

    The daemon never adds its tables to someone else's database: name
    another file with ``--db``.
    """


class StartRefused(DaemonError, ValueError):
    """The configuration cannot work (a path that is no database file,
    no permission); retrying would not help, the message says what to do."""
