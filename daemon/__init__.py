"""
livemon's writer daemon: drains the shared-memory ring into SQLite.
"""

from __future__ import annotations

from daemon.drain import Drainer
from daemon.exceptions import (
    AlreadyRunning,
    DaemonError,
    DatabaseCorrupt,
    DatabaseGone,
    DatabaseMoved,
    DatabaseReplaced,
    ForeignDatabase,
    NotRunning,
    StartFailed,
    StartRefused,
    StopTimedOut,
)
from daemon.quarantine import Quarantine
from daemon.service import Service
from daemon.store import Store

__all__ = [
    "AlreadyRunning",
    "DaemonError",
    "DatabaseCorrupt",
    "DatabaseGone",
    "DatabaseMoved",
    "DatabaseReplaced",
    "Drainer",
    "ForeignDatabase",
    "NotRunning",
    "Quarantine",
    "Service",
    "StartFailed",
    "StartRefused",
    "StopTimedOut",
    "Store",
]
