"""
Exceptions raised by the daemon: one base, each subclass also a built-in
category.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "DaemonError",
    "DatabaseCorrupt",
    "NotRunning",
    "StartFailed",
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
