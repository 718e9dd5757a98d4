"""
The daemon's lifetime: instance lock, pidfile, rings, signals, readiness,
the published status and health, upkeep (checkpoints, retention), and
the final drain at stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Mapping
from typing import Any

import ringbuf
from daemon import proc
from daemon.drain import Drainer
from daemon.notify import Notifier
from daemon.retention import DAEMON_SHARE, Retention
from daemon.store import Store
from livemon import ipc
from livemon.config import load_config
from livemon.exceptions import ConfigError

logger = logging.getLogger("livemon.daemon")

STATUS_INTERVAL_S = 1.0
CHECKPOINT_INTERVAL_S = 2.0
OPTIMIZE_INTERVAL_S = 3600.0
RETENTION_CHECK_S = 3600.0
STOP_DEADLINE_S = 20.0


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
        self._retention: Retention | None = None
        self._retaining = False
        self._started = time.time()
        self._rate = 0.0  # records drained per second, between publications
        self._rate_since = (time.monotonic(), 0)
        self._next: dict[str, float] = {}

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        config = self.config
        events, labels = ipc.open_rings(config)
        rings: tuple[ringbuf.Ring, ...] = (events, labels)
        lock = proc.InstanceLock(config, events)
        try:
            lock.acquire()
            feedback = ipc.open_ring(config, ipc.feedback_ring(config))
        except BaseException:
            events.close()
            labels.close()
            raise
        rings += (feedback,)
        pidfile = proc.Pidfile(config.pidfile)
        drainer = Drainer(
            config,
            events,
            labels,
            lambda: Store(
                config.db, synchronous=config.synchronous, mode=config.mode
            ),
            feedback,
        )
        try:
            pidfile.write(config.mode)
            self._install_signals()
            drainer.step()  # open the store now, so readiness means it
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
            drainer.close()
            for ring in rings:
                ring.close()
            pidfile.remove_if_mine()
            _remove(ipc.status_file(config))
            lock.release()
            self.notifier.close()

    def _loop(self, drainer: Drainer) -> None:
        while not self.stop_event.is_set():
            moved = drainer.step()
            self._upkeep(drainer)
            if moved < self.config.batch_records // 2:
                self.stop_event.wait(self.config.batch_interval_s)

    def _final_drain(self, drainer: Drainer) -> None:
        deadline = time.monotonic() + STOP_DEADLINE_S
        while time.monotonic() < deadline:
            moved = drainer.step()
            if drainer.last_error is not None:
                time.sleep(
                    0.1
                )  # the database may come back before the deadline
            elif moved == 0:
                break
        left = sum(s.pending for s in drainer.lanes())
        logger.info(
            "stopped after draining %d records; %d left in the ring%s",
            drainer.drained,
            left,
            f" ({drainer.last_error})" if drainer.last_error else "",
        )

    def _due(self, what: str, every_s: float) -> bool:
        now = time.monotonic()
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every_s
        return True

    def _upkeep(self, drainer: Drainer) -> None:
        self.notifier.watchdog()
        if self._reload:
            self._reload = False
            self._reread_config(drainer)
        if self._due("status", STATUS_INTERVAL_S):
            self.notifier.status(self._publish(drainer))
        store = drainer.store
        if store is None:
            return
        try:
            if self._due("checkpoint", CHECKPOINT_INTERVAL_S):
                store.checkpoint()
            if self._due("health", self.config.health_interval_s):
                self._add_health(drainer, store)
            if self._due("optimize", OPTIMIZE_INTERVAL_S):
                store.optimize()
            self._retain(store)
        except sqlite3.Error as exc:
            drainer.report_trouble(exc)

    def _retain(self, store: Store) -> None:
        # A batch now and then, so draining goes on while old rows move.
        if not (self._retaining or self._due("retention", RETENTION_CHECK_S)):
            return
        if self._retention is None or self._retention.store is not store:
            self._retention = Retention(
                store, self.config.retention_days, self.config.archive_dir
            )
        self._retaining = self._retention.step_within(DAEMON_SHARE)
        if not self._retaining:
            store.db.execute("PRAGMA incremental_vacuum")

    def _figures(self, drainer: Drainer) -> dict[str, Any]:
        lanes = drainer.lanes()
        capacity = drainer.events.capacity_records
        fill = [round(s.pending / capacity, 4) for s in lanes]
        return {
            "pid": os.getpid(),
            "ring": self.config.ring,
            "db": self.config.db,
            "started_at": self._started,
            "drained": drainer.drained,
            "drain_per_s": round(self._rate, 1),
            "dropped": sum(s.dropped for s in lanes),
            "lag_records": sum(s.pending for s in lanes),
            "lanes_in_use": sum(s.owned for s in lanes),
            "lanes": len(lanes),
            "ring_fill": fill,
            "batch_latency_ms": drainer.batch_latency_ms,
            "db_size_bytes": drainer.store.size_bytes()
            if drainer.store
            else None,
            "last_error": drainer.last_error,
        }

    def _publish(self, drainer: Drainer) -> str:
        """Write the status file read by ``status``; return a STATUS= line."""
        now = time.monotonic()
        last_time, last_drained = self._rate_since
        if now > last_time:
            self._rate = (drainer.drained - last_drained) / (now - last_time)
        self._rate_since = (now, drainer.drained)
        figures = self._figures(drainer)
        figures["ready"] = True
        proc.write_atomic(
            ipc.status_file(self.config),
            json.dumps(figures),
            self.config.mode,
        )
        return _summary(figures)

    def _add_health(self, drainer: Drainer, store: Store) -> None:
        f = self._figures(drainer)
        store.add_health(
            timestamp_ns=time.time_ns(),
            drained=f["drained"],
            dropped=f["dropped"],
            lanes_in_use=f["lanes_in_use"],
            ring_fill_max=max(f["ring_fill"]),
            ring_fill_json=json.dumps(f["ring_fill"]),
            lag_records=f["lag_records"],
            drain_per_s=f["drain_per_s"],
            batch_latency_ms=f["batch_latency_ms"],
            db_size_bytes=store.size_bytes(),
            last_error=f["last_error"],
        )

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
        reopen_log(self.config.log_file)
        try:
            fresh = load_config(self._overrides)
        except ConfigError as exc:
            logger.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        fixed = ("ring", "db", "lanes", "capacity_records", "pidfile")
        changed = [
            k for k in fixed if getattr(fresh, k) != getattr(self.config, k)
        ]
        if changed:
            logger.warning(
                "SIGHUP: %s change only on restart", ", ".join(changed)
            )
        self.config = drainer.config = fresh
        logger.info("SIGHUP: configuration reread, log reopened")


def _summary(f: dict[str, Any]) -> str:
    trouble = f"; DB TROUBLE: {f['last_error']}" if f["last_error"] else ""
    return (
        f"drained {f['drained']} ({f['drain_per_s']}/s), lag "
        f"{f['lag_records']}, dropped {f['dropped']}, lanes "
        f"{f['lanes_in_use']}/{f['lanes']}{trouble}"
    )


def reopen_log(path: str) -> None:
    """Point stdout and stderr at ``path`` again (after log rotation).

    Only when stderr is a regular file (a detached daemon's log); under
    systemd it is the journal, in a terminal a tty: both are left alone.
    """
    if not stat.S_ISREG(os.fstat(2).st_mode):
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
