"""
The daemon's retention passes: the first right after start, then one an
hour, each a batch per loop turn within ``DAEMON_SHARE`` of the time; and
what status says of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from daemon import figures
from daemon.retention import DAEMON_SHARE, TABLES, Retention
from daemon.store import Store
from livemon.config import Config

logger = logging.getLogger("livemon.daemon")

RETENTION_CHECK_S = 3600.0
RETRY_AFTER_FAILURE_S = 300.0


class RetentionPasses:
    """Moves old rows now and then, so draining goes on while they move.

    Args:
        config: the daemon's settings (``retention_days``,
            ``archive_dir``).
        sinks_for: the destinations taking a table (retention keeps rows
            until every one of them shipped them).
    """

    def __init__(
        self, config: Config, sinks_for: Callable[[str], list[str]]
    ) -> None:
        self.config = config
        self._sinks_for = sinks_for
        self._retention: Retention | None = None
        self._running = False
        self._due_at = 0.0  # monotonic: due at once
        self._finished_at: float | None = None  # Unix seconds
        self._last_error: str | None = None

    def reconfigure(self, config: Config) -> None:
        """Take reread settings (SIGHUP): the next batch uses them."""
        self.config = config
        self._retention = None

    def turn(self, store: Store) -> None:
        """One loop turn's share: a batch, if a pass runs or is due."""
        if not self._running:
            now = time.monotonic()
            if now < self._due_at:
                return
            self._due_at = now + RETENTION_CHECK_S
        if self._retention is None or self._retention.store is not store:
            self._retention = Retention(
                store,
                self.config.retention_days,
                self.config.archive_dir,
                sinks={table: self._sinks_for(table) for table in TABLES},
            )
        try:
            self._running = self._retention.step_within(DAEMON_SHARE)
        except OSError as exc:
            self._failed(exc)
            return
        self._last_error = None
        if not self._running:
            store.db.execute("PRAGMA incremental_vacuum")
            self._finished_at = time.time()

    def _failed(self, exc: OSError) -> None:
        """The archive side failed (``archive_dir`` a file, unwritable,
        full): retention's own trouble, said as such; the rows stay and
        the drain goes on (SQLite errors are the database's: the caller
        treats those)."""
        self._running = False
        self._due_at = time.monotonic() + RETRY_AFTER_FAILURE_S
        self._last_error = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "retention pass failed (%s); the old rows stay, retrying in "
            "%.0f s",
            self._last_error,
            RETRY_AFTER_FAILURE_S,
        )

    def figures(self) -> dict[str, Any]:
        """What status shows: running, last finished, next due."""
        return figures.retention_figures(
            self.config,
            running=self._running,
            last_pass_at=self._finished_at,
            next_pass_in_s=self._due_at - time.monotonic(),
            last_error=self._last_error,
        )
