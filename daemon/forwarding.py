"""
The daemon's forwarders as one group: started after the store opens,
their marks stored through the daemon's write connection, stopped
within a bound at shutdown.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from daemon.forward import Destination, Forwarder
from livemon.db.transaction import atomic


class Forwarding:
    """Every configured destination's forwarder, started and stopped
    with the daemon."""

    def __init__(
        self,
        db_path: str,
        destinations: Sequence[Destination],
        **options: Any,
    ) -> None:
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names repeat: {names}")
        self.forwarders = [
            Forwarder(db_path, d, **options) for d in destinations
        ]
        self._saved: dict[tuple[str, str], int] = {}

    def names_for(self, source: str) -> list[str]:
        """The destinations that take ``source`` (retention keeps what
        the slowest of them has not shipped)."""
        return [
            f.name for f in self.forwarders if source in f.destination.sources
        ]

    def start(self) -> None:
        """Start every forwarder's thread."""
        for forwarder in self.forwarders:
            forwarder.start()

    def figures(self) -> list[dict[str, Any]]:
        """Each destination's figures, for the status file."""
        return [f.figures() for f in self.forwarders]

    def save(self, db: sqlite3.Connection) -> None:
        """Store the marks that moved, in one transaction on ``db`` (the
        daemon's write connection: the forwarders only read)."""
        changed = [
            (f.name, source, mark, time.time_ns())
            for f in self.forwarders
            for source, mark in f.marks().items()
            if self._saved.get((f.name, source)) != mark
        ]
        if not changed:
            return
        with atomic(db):
            db.executemany(
                "INSERT INTO sink_progress (sink, source, last_id, "
                "updated_ns) VALUES (?, ?, ?, ?) ON CONFLICT (sink, source) "
                "DO UPDATE SET last_id = excluded.last_id, "
                "updated_ns = excluded.updated_ns",
                changed,
            )
        self._saved.update({(n, s): m for n, s, m, _ in changed})

    def stop(self, timeout_s: float) -> bool:
        """Ship what can be shipped within ``timeout_s``, then stop every
        forwarder; return whether all stopped in time.  Never raises."""
        deadline = time.monotonic() + timeout_s
        for forwarder in self.forwarders:
            forwarder.request_stop(deadline)
        return all([f.join(deadline) for f in self.forwarders])
