"""
livemon's writer daemon: drains the shared-memory ring into SQLite.
"""

from __future__ import annotations

from daemon.drain import Drainer
from daemon.exceptions import (
    AlreadyRunning,
    DaemonError,
    DatabaseCorrupt,
    NotRunning,
    StartFailed,
    StopTimedOut,
)
from daemon.service import Service
from daemon.store import Store

__all__ = [
    "AlreadyRunning",
    "DaemonError",
    "DatabaseCorrupt",
    "Drainer",
    "NotRunning",
    "Service",
    "StartFailed",
    "StopTimedOut",
    "Store",
]
