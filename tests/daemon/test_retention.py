"""
Retention moves exactly the old rows into monthly archives, survives a
crash between copy and delete, and runs while the daemon drains.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import ringbuf
from daemon.retention import NS_PER_DAY, Retention
from daemon.status import retention_lines
from daemon.store import Store
from livemon.db import rollup
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_record
from tests.daemon.conftest import ROOT, coordinators, recorded

NOW = 1_790_000_000 * 10**9  # 2026-09-21


def events_at(times_ns, lane=5) -> ringbuf.Batch:
    """Event records at the given timestamps, identities (1, lane, i)."""
    records = np.zeros(len(times_ns), RECORD_DTYPE)
    records["timestamp_ns"] = times_ns
    records["request_id"] = np.arange(len(times_ns))
    return ringbuf.Batch(lane, 0, records)


def identities(path, where="") -> set[tuple[int, int, int]]:
    """The (epoch, lane, seq) of every event in a database file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return set(db.execute(f"SELECT epoch, lane, seq FROM events {where}"))


def rolled_up(path) -> list[tuple[int, int]]:
    """Records per hour, as the rollups have them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT hour, sum(requests) FROM rollup WHERE agent = 0 "
            "GROUP BY hour ORDER BY 1"
        ).fetchall()


def counted(path) -> list[tuple[int, int]]:
    """Records per hour, counted in the events table."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            f"SELECT timestamp_ns / {rollup.NS_PER_HOUR}, count(*) "
            "FROM events GROUP BY 1 ORDER BY 1"
        ).fetchall()


@pytest.fixture
def store(tmp_path):
    """A store holding 300 old events over two months and 200 new ones."""
    store = Store(str(tmp_path / "unified.db"))
    old = NOW - 130 * NS_PER_DAY + np.arange(300) * (NS_PER_DAY // 10)
    new = NOW - 10 * NS_PER_DAY + np.arange(200)
    coder = np.frombuffer(label_record("coder"), LABEL_DTYPE).copy()
    labels = [ringbuf.Batch(0, 0, coder)]
    store.write(1, labels, [events_at(np.concatenate([old, new]))])
    yield store
    store.close()


class TestRetention:
    def test_a_concurrent_pass_moving_the_same_rows(
        self, store, tmp_path, monkeypatch
    ):
        """Another pass (the daemon's, or a second `retain`) moves the
        rows this one chose before it copies them: no error, each row
        archived once, each pass reports only what it moved itself."""
        old = identities(
            store.path, f"WHERE timestamp_ns < {NOW - 90 * NS_PER_DAY}"
        )
        archive = str(tmp_path / "archive")
        other = Store(store.path)
        mine = Retention(store, 90, archive)
        copy = mine._copy
        theirs = []

        def copy_after_the_other_pass(*args, **kwargs):
            if not theirs:  # once: between choosing and copying
                theirs.append(Retention(other, 90, archive).run(NOW).total)
            return copy(*args, **kwargs)

        monkeypatch.setattr(mine, "_copy", copy_after_the_other_pass)
        try:
            report = mine.run(NOW)
        finally:
            other.close()
        assert theirs == [len(old)] and report.total == 0
        archives = glob.glob(os.path.join(archive, "events-*.db"))
        assert sum(len(identities(a)) for a in archives) == len(old)
        assert set().union(*(identities(a) for a in archives)) == old
        assert not identities(
            store.path, f"WHERE timestamp_ns < {NOW - 90 * NS_PER_DAY}"
        )

    def test_moves_exactly_the_old_rows(self, store, tmp_path):
        """Old rows leave for their month's archive; new ones stay."""
        before = identities(store.path)
        old = identities(
            store.path, f"WHERE timestamp_ns < {NOW - 90 * NS_PER_DAY}"
        )
        report = Retention(store, 90, str(tmp_path / "archive")).run(NOW)
        assert report.total == len(old) == 300
        archives = sorted(glob.glob(str(tmp_path / "archive" / "events-*.db")))
        assert [a.rsplit("/", 1)[1] for a in archives] == [
            "events-2026-05.db",
            "events-2026-06.db",
        ]
        archived = set().union(*(identities(a) for a in archives))
        assert archived == old
        assert identities(store.path) == before - old
        for path in [store.path, *archives]:  # reports see what is there
            assert rolled_up(path) == counted(path)
            assert counted(path)
        with contextlib.closing(sqlite3.connect(archives[0])) as db:
            assert db.execute("SELECT text FROM labels").fetchone() == (
                "coder",
            )
            assert (
                db.execute(
                    "SELECT count(*) FROM monitoring_events"
                ).fetchone()[0]
                > 0
            )

    def test_crash_between_copy_and_delete(self, store, tmp_path):
        """Rows copied but not deleted are neither lost nor doubled."""
        retention = Retention(store, 90, str(tmp_path / "archive"))
        rows = store.db.execute(
            "SELECT id, timestamp_ns FROM events ORDER BY id LIMIT 50"
        ).fetchall()
        path = str(tmp_path / "archive" / "events-2026-05.db")
        span = (rows[0][1], rows[-1][1])
        retention._copy(path, [r[0] for r in rows], span)  # ... and dies
        retention.run(NOW)
        archives = glob.glob(str(tmp_path / "archive" / "events-*.db"))
        assert sum(len(identities(a)) for a in archives) == 300
        assert len(identities(store.path)) == 200
        for path in [store.path, *archives]:
            assert rolled_up(path) == counted(path)

    def test_nothing_due(self, store, tmp_path):
        """A pass with nothing old moves nothing and creates no archive."""
        report = Retention(store, 365, str(tmp_path / "archive")).run(NOW)
        assert report.total == 0
        assert not (tmp_path / "archive").exists()

    def test_bad_age(self, store, tmp_path):
        """A non-positive age is refused."""
        with pytest.raises(ValueError):
            Retention(store, 0, str(tmp_path))


def last_pass(daemon) -> float | None:
    """When the daemon's last retention pass finished, as its status says."""
    return (daemon.status().get("retention") or {}).get("last_pass_at")


class TestWhileDraining:
    def test_retain_cli_while_the_daemon_drains(self, start_daemon, tmp_path):
        """Old rows move while new ones keep arriving; nothing is lost.

        The old rows are written once the daemon's status says its
        start-up retention pass finished: its next pass is an hour away,
        so the CLI's pass is the one that moves them, every time.
        """
        daemon = start_daemon()
        daemon.wait_until(lambda: last_pass(daemon) is not None)
        first_pass = last_pass(daemon)
        now = time.time_ns()
        with contextlib.closing(Store(daemon.db)) as store:
            store.write(
                7,
                [],
                [events_at(now - 200 * NS_PER_DAY + np.arange(2000) * 10**9)],
            )
        load = coordinators(daemon.env, 2, 3000)
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "retain"],
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert "2000 events older than 90 days moved" in result.stdout
        sent = recorded(load)
        daemon.wait_until(lambda: daemon.count() == sent)
        assert last_pass(daemon) == first_pass  # the daemon moved none
        assert daemon.stop() == 0
        assert (
            daemon.count(
                f"SELECT count(*) FROM events WHERE timestamp_ns < {now}"
                " - 90 * 86400000000000"
            )
            == 0
        )
        archive = glob.glob(str(tmp_path / "state" / "archive" / "*.db"))
        assert sum(len(identities(a)) for a in archive) == 2000

    def test_start_up_pass_moves_old_rows_and_says_when(
        self, start_daemon, daemon_env, tmp_path
    ):
        """Rows already old at start move in the daemon's first pass, and
        status tells when it finished and when the next is due."""
        os.makedirs(tmp_path / "state")
        old = time.time_ns() - 200 * NS_PER_DAY + np.arange(500) * 10**9
        # And one young row: the newest row always stays (its id).
        times = np.append(old, time.time_ns())
        with contextlib.closing(Store(daemon_env["LIVEMON_DB"])) as store:
            store.write(7, [], [events_at(times)])
        started = time.time()
        daemon = start_daemon()
        daemon.wait_until(lambda: last_pass(daemon) is not None)
        block = daemon.status()["retention"]
        assert block["older_than_days"] == 90
        assert block["running"] is False
        assert started <= block["last_pass_at"] <= time.time()
        assert 3000 < block["next_pass_in_s"] <= 3600  # hourly
        assert daemon.count() == 1
        archive = glob.glob(str(tmp_path / "state" / "archive" / "*.db"))
        assert sum(len(identities(a)) for a in archive) == 500
        shown = subprocess.run(
            [sys.executable, "-m", "daemon", "status"],
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert shown.returncode == 0, shown.stderr
        assert "retention older than 90 days: last pass finished " in (
            shown.stdout
        )
        assert daemon.stop() == 0


# The retention figures as a daemon publishes them.
PUBLISHED = {
    "older_than_days": 30,
    "running": False,
    "last_pass_at": 1_790_000_000.0,
    "next_pass_in_s": 1200.4,
}


class TestRetentionStatus:
    """The retention line of ``livemon-daemon status``."""

    def test_last_pass_and_next(self):
        """A finished pass shows its time (UTC) and when the next is due."""
        assert retention_lines(PUBLISHED) == [
            "  retention older than 30 days: last pass finished "
            "2026-09-21 14:13:20 UTC, next in 1200 s"
        ]

    def test_running_and_not_yet(self):
        """A pass under way says so; before the first, it says none."""
        running = {**PUBLISHED, "running": True, "next_pass_in_s": None}
        assert "a pass is moving old rows now" in retention_lines(running)[0]
        fresh = {**PUBLISHED, "last_pass_at": None, "next_pass_in_s": 0.0}
        assert retention_lines(fresh) == [
            "  retention older than 30 days: no pass finished yet, next in 0 s"
        ]

    def test_older_daemon_shows_nothing(self):
        """A daemon that publishes no retention figures adds no line."""
        assert retention_lines(None) == []
        assert retention_lines({}) == []
