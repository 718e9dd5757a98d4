"""
The daemon's lifetime: instance lock, pidfile, rings, signals, readiness,
publishing status and health (assembled in ``daemon.figures``), upkeep
(checkpoints, retention), and the final drain at stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ringbuf
from daemon import agent_runs, figures, follow, proc, sinks
from daemon.drain import Drainer
from daemon.exceptions import DatabaseCorrupt
from daemon.forwarding import Forwarding
from daemon.notify import Notifier
from daemon.replay import STEP_BATCHES, SpillReplayer
from daemon.retention_passes import RetentionPasses
from daemon.status import status_line
from daemon.store import IntegrityCheck, Store, check_database_path
from livemon import ipc
from livemon.config import Config, load_config
from livemon.exceptions import ConfigError

logger = logging.getLogger("livemon.daemon")

STATUS_INTERVAL_S = 1.0
CHECKPOINT_INTERVAL_S = 2.0
OPTIMIZE_INTERVAL_S = 3600.0
STOP_DEADLINE_S = 20.0
FORWARD_STOP_S = 5.0  # after the final drain: within systemd's 30 s
PIDFILE_RETRY_S = 2.0


class Service:
    """The daemon process: locks, pidfile, rings, drain loop, upkeep."""

    def __init__(
        self,
        overrides: Mapping[str, Any],
        notifier: Notifier | None = None,
    ) -> None:
        self._overrides = dict(overrides)
        self.config = load_config(self._overrides)
        self.stop_event = threading.Event()
        self.notifier = notifier or Notifier()
        self._reload = False
        self._retention = RetentionPasses(
            self.config, lambda table: self._forwarding.names_for(table)
        )
        self._started = time.time()
        self._rate = 0.0  # records drained per second, between publications
        self._rate_since = (time.monotonic(), 0)
        self._next: dict[str, float] = {}
        # Files beside the database that could not be written (full or
        # read-only filesystem): what failed, shown in status and health.
        self.file_errors: dict[str, str] = {}
        self._pidfile_written = False
        self._integrity: IntegrityCheck | None = None
        # Old segments still drained while producers hold lanes there.
        self._retired: list[follow.Retired] = []
        # Prometheus metrics: read the figures last published, at scrape.
        self.figures: dict[str, Any] | None = None
        self._metrics = figures.metrics_server(
            self.config, lambda: self.figures
        )
        # Destinations fed from the database (daemon/forward.py); they
        # hold back while the drain has a backlog.
        self._drain_busy = False
        self._forwarding = Forwarding(
            self.config.db,
            sinks.configured(self.config, self.config.host),
            drain_busy=lambda: self._drain_busy,
        )

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status.

        Raises:
            StartRefused, ForeignDatabase: the database path can never
                work; nothing was created.
            AlreadyRunning: another daemon drains the ring or database;
                rings this call created are removed again.
        """
        config = self.config
        # Everything the daemon creates (logs, WAL, archives, spill files)
        # is owner-only, plus the group's bits when a group is configured.
        os.umask(0o077 & ~(config.mode & 0o070))
        # Locked or damaged: the store says so and retries, as ever.
        with contextlib.suppress(sqlite3.Error):
            check_database_path(config.db)
        events, labels, feedback, lock = proc.open_and_lock(config)
        agents = agent_runs.open_agents_ring(config)
        self._rings = [events, labels, feedback, *([agents] if agents else [])]
        pidfile = proc.Pidfile(config.pidfile)

        def open_store() -> Store:
            lock.lock_database()  # the file now at the path, before writing
            return Store(
                config.db,
                synchronous=config.synchronous,
                mode=config.mode,
                min_free_bytes=config.db_min_free_bytes,
            )

        drainer = Drainer(
            config, events, labels, open_store, feedback, agents=agents
        )
        # Spilled records first: a spilled label then precedes the ring
        # events that name it.
        self._replayer = SpillReplayer(
            ipc.spill_root(config), config.ring, lambda: drainer.store
        )
        self._agent_replayer = agent_runs.AgentSpillReplayer(
            ipc.spill_root(config), config.ring, lambda: drainer.store
        )
        self._next["integrity"] = (
            time.monotonic() + config.integrity_check_interval_s
        )
        try:
            self._write_pidfile(pidfile)
            self._install_signals()
            drainer.step()  # open the store now, so readiness means it
            self._forwarding.start()
            self._replace_rings(follow.regrow, drainer)
            if self._metrics is not None:
                self._metrics.upkeep()
            self.notifier.ready(self._publish(drainer))
            logger.info(
                "draining ring %r into %s (pid %d)",
                config.ring,
                config.db,
                os.getpid(),
            )
            self._loop(drainer)
            self.notifier.stopping()
            self._final_drain(drainer)
            return 0
        finally:
            # What the final drain added ships within a bound, then the
            # marks are kept (the rest ships after the next start).
            self._forwarding.close(FORWARD_STOP_S, drainer.store)
            if self._metrics is not None:
                self._metrics.stop()
            drainer.close()
            for ring in self._rings:
                ring.close()
            for retired in self._retired:
                retired.close()
            pidfile.remove_if_mine()
            proc.remove_file(ipc.status_file(config))
            lock.release()
            self.notifier.close()

    def _loop(self, drainer: Drainer) -> None:
        while not self.stop_event.is_set():
            moved = self._step(drainer)
            self._drain_busy = moved >= self.config.batch_records // 2
            self._upkeep(drainer)
            if not self._drain_busy:
                self.stop_event.wait(self.config.batch_interval_s)

    def _final_drain(self, drainer: Drainer) -> None:
        deadline = time.monotonic() + STOP_DEADLINE_S
        while time.monotonic() < deadline:
            moved = self._step(drainer)
            if drainer.last_error is not None:
                time.sleep(
                    0.1
                )  # the database may come back before the deadline
            elif moved == 0:
                break
        left = sum(max(s.pending, 0) for s in drainer.lanes())
        logger.info(
            "stopped after draining %d records; %d left in the ring%s",
            drainer.drained,
            left,
            f" ({drainer.last_error})" if drainer.last_error else "",
        )

    def _step(self, drainer: Drainer) -> int:
        """Replay spill files, then drain the rings; return records moved."""
        n = self.config.batch_records
        # Spill replay takes larger steps than the drain (daemon/replay.py).
        replayed = self._replayer.step(STEP_BATCHES * n)
        replayed += self._agent_replayer.step(n)
        moved = replayed + drainer.step()
        for retired in self._retired:
            moved += retired.step(drainer)
        return moved

    def _follow_rings(self, drainer: Drainer) -> None:
        if not self._due("rings", follow.CHECK_INTERVAL_S):
            return
        self._retired = [r for r in self._retired if not r.done()]
        if follow.replaced(drainer):
            self._replace_rings(follow.follow, drainer)
        elif drainer.agents is not None and drainer.agents.replaced:
            self._replace_rings(follow.follow_agents, drainer)
        elif drainer.agents is None:  # not opened yet: try again
            drainer.agents = agent_runs.open_agents_ring(self.config)
            if drainer.agents is not None:
                self._rings.append(drainer.agents)

    def _replace_rings(
        self,
        how: Callable[[Config, Drainer], list[ringbuf.Ring]],
        drainer: Drainer,
    ) -> None:
        try:
            old = how(self.config, drainer)
            if old:
                self._retired.append(follow.Retired(self.config, old))
        except (ringbuf.RingError, OSError) as exc:
            logger.error("cannot move to the new rings: %s", exc)
        current = (
            drainer.events,
            drainer.labels,
            drainer.feedback,
            drainer.agents,
        )
        self._rings = [ring for ring in current if ring is not None]

    def _due(self, what: str, every_s: float) -> bool:
        now = time.monotonic()
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every_s
        return True

    def _write_pidfile(self, pidfile: proc.Pidfile) -> None:
        # A full or read-only filesystem must not stop the drain: the
        # pidfile is retried until it can be written.
        try:
            pidfile.write(self.config.mode)
        except OSError as exc:
            self._file_trouble("pidfile", pidfile.path, exc)
            return
        self._pidfile_written = True
        self._file_fine("pidfile", pidfile.path)

    def _file_trouble(self, what: str, path: str, exc: OSError) -> None:
        text = f"cannot write {what} {path}: {exc.strerror or exc}"
        if self.file_errors.get(what) != text:
            logger.warning("%s; retrying, the drain goes on", text)
        self.file_errors[what] = text

    def _file_fine(self, what: str, path: str) -> None:
        if self.file_errors.pop(what, None) is not None:
            logger.info("%s %s written again", what, path)

    def _upkeep(self, drainer: Drainer) -> None:
        self.notifier.watchdog()
        self._follow_rings(drainer)
        if self._reload:
            self._reload = False
            self._reread_config(drainer)
        if not self._pidfile_written and self._due("pidfile", PIDFILE_RETRY_S):
            self._write_pidfile(proc.Pidfile(self.config.pidfile))
        if self._metrics is not None:
            self._metrics.upkeep()
        if self._due("status", STATUS_INTERVAL_S):
            self.notifier.status(self._publish(drainer))
        store = drainer.store
        if store is None:
            return
        try:
            if self._due("checkpoint", CHECKPOINT_INTERVAL_S):
                store.verify()  # before a checkpoint writes into the file
                store.checkpoint()
            if self._due("health", self.config.health_interval_s):
                self._add_health(drainer, store)
            if self._due("sink marks", STATUS_INTERVAL_S):
                self._forwarding.save(store)
            if self._due("optimize", OPTIMIZE_INTERVAL_S):
                store.optimize()
            self._retention.turn(store)
            self._check_integrity(store)
        except Exception as exc:  # the loop's boundary, as Drainer.step
            drainer.handle_failure(exc)

    def _check_integrity(self, store: Store) -> None:
        """quick_check in a thread now and then; raise what it found."""
        job = self._integrity
        if job is None:
            if self._due("integrity", self.config.integrity_check_interval_s):
                self._integrity = IntegrityCheck(store)
                self._integrity.start()
            return
        if job.is_alive():
            return
        self._integrity = None
        if job.store is store and job.problems:
            raise DatabaseCorrupt(f"quick_check: {'; '.join(job.problems)}")

    def _figures(self, drainer: Drainer) -> dict[str, Any]:
        return figures.daemon_figures(
            self.config,
            drainer,
            started=self._started,
            rate=self._rate,
            file_errors=self.file_errors,
            replayer=self._replayer,
            agent_replayer=self._agent_replayer,
            sinks=self._forwarding.figures(),
        ) | {"retention": self._retention.figures()}

    def _publish(self, drainer: Drainer) -> str:
        """Write the status file read by ``status``; return a STATUS= line."""
        now = time.monotonic()
        last_time, last_drained = self._rate_since
        if now > last_time:
            self._rate = (drainer.drained - last_drained) / (now - last_time)
        self._rate_since = (now, drainer.drained)
        figures = self._figures(drainer)
        figures["ready"] = True
        figures["published_at"] = time.time()
        figures["metrics_url"] = self._metrics and self._metrics.url
        figures["metrics_error"] = self._metrics and self._metrics.last_error
        # Complete: a scrape reads it from now on, before the status file
        # shows it, so the metrics never lag a status an operator read.
        self.figures = figures
        path = ipc.status_file(self.config)
        try:
            proc.write_atomic(path, json.dumps(figures), self.config.mode)
        except OSError as exc:
            self._file_trouble("status file", path, exc)
            errors = sorted(self.file_errors.values())
            # A new dict: a scrape may be reading the published one.
            figures = self.figures = figures | {"file_errors": errors}
        else:
            self._file_fine("status file", path)
        return status_line(figures)

    def _add_health(self, drainer: Drainer, store: Store) -> None:
        row = figures.health_row(self._figures(drainer), store, time.time_ns())
        store.add_health(**row)

    def _install_signals(self) -> None:
        def stop(signum: int, frame: object) -> None:
            self.stop_event.set()  # the loop drains and exits, not here

        def reload(signum: int, frame: object) -> None:
            self._reload = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        # A file-size limit must fail a write (SQLite reports it), not kill us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def _reread_config(self, drainer: Drainer) -> None:
        proc.reopen_log(self.config.log_file)
        try:
            fresh = load_config(self._overrides)
        except ConfigError as exc:
            logger.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        fixed = (
            "ring",
            "db",
            "db_min_free_bytes",
            "host",
            "clickhouse_url",
            "clickhouse_batch_bytes",
            "otlp_endpoint",
            "otlp_batch_bytes",
            "alert_webhook_url",
            "lanes",
            "capacity_records",
            "pidfile",
            "status_file",
            "metrics_address",
        )
        changed = [
            k for k in fixed if getattr(fresh, k) != getattr(self.config, k)
        ]
        if changed:
            logger.warning(
                "SIGHUP: %s change only on restart", ", ".join(changed)
            )
        self.config = drainer.config = fresh
        self._retention.reconfigure(fresh)
        logger.info("SIGHUP: configuration reread, log reopened")
