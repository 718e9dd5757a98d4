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
        self._saved: dict[tuple[Any, str, str], int] = {}  # file, sink, source

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

    def save(
        self, db: sqlite3.Connection, identity: tuple[int, int] | None = None
    ) -> None:
        """Store the marks that moved, in one transaction on ``db`` (the
        daemon's write connection: the forwarders only read).

        Args:
            identity: (st_dev, st_ino) of ``db``'s file: marks a forwarder
                read from another file (one since replaced) are not saved.
        """
        changed: dict[tuple[Any, str, str], int] = {}
        for forwarder in self.forwarders:
            of, marks = forwarder.marks()
            if identity is not None and of != identity:
                continue
            for source, mark in marks.items():
                if self._saved.get((of, forwarder.name, source)) != mark:
                    changed[of, forwarder.name, source] = mark
        if not changed:
            return
        with atomic(db):
            db.executemany(
                "INSERT INTO sink_progress (sink, source, last_id, "
                "updated_ns) VALUES (?, ?, ?, ?) ON CONFLICT (sink, source) "
                "DO UPDATE SET last_id = excluded.last_id, "
                "updated_ns = excluded.updated_ns",
                [
                    (name, source, mark, time.time_ns())
                    for (_, name, source), mark in changed.items()
                ],
            )
        self._saved.update(changed)

    def stop(self, timeout_s: float) -> bool:
        """Ship what can be shipped within ``timeout_s``, then stop every
        forwarder; return whether all stopped in time.  Never raises."""
        deadline = time.monotonic() + timeout_s
        for forwarder in self.forwarders:
            forwarder.request_stop(deadline)
        return all([f.join(deadline) for f in self.forwarders])
