"""
The real daemon when its world goes wrong: the database deleted, replaced,
overwritten or truncated under it; bad lanes and bad records in the ring;
a full or read-only filesystem.  Nothing still in the ring is lost, no
garbage is stored, and the daemon never stops.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from livemon import ipc
from livemon import record as rec
from tests import mounts
from tests.daemon import harness
from tests.daemon.conftest import coordinators, recorded

EVENTS = "SELECT count(*) FROM events"


def health_errors(db: str) -> str:
    """Every last_error of the health rows, joined."""
    with contextlib.closing(
        sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ) as connection:
        rows = connection.execute(
            "SELECT last_error FROM health WHERE last_error IS NOT NULL"
        ).fetchall()
    return " | ".join(r[0] for r in rows)


class TestDatabaseMoved:
    def test_deleted_database_is_created_anew_and_said_loudly(
        self, start_daemon
    ):
        """rm of the database: later records go to a new file at the path,
        and status and health say what happened."""
        daemon = start_daemon()
        first = recorded(coordinators(daemon.env, 1, 1000))
        daemon.wait_until(lambda: daemon.count() == first)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(daemon.db + suffix)
        after = recorded(coordinators(daemon.env, 2, 2000))
        daemon.wait_until(lambda: daemon.count() == after)
        daemon.wait_until(
            lambda: "DATABASE DELETED" in (daemon.status()["incident"] or "")
        )
        daemon.wait_until(lambda: "DELETED" in health_errors(daemon.db))
        assert daemon.stop() == 0
        assert daemon.count() == after == 4000
        assert "DATABASE DELETED" in harness.output(daemon)

    def test_replaced_by_a_livemon_database_it_is_used(
        self, start_daemon, tmp_path
    ):
        """mv of another livemon database onto the path: it gets the rest."""
        daemon = start_daemon()
        first = recorded(coordinators(daemon.env, 1, 500))
        daemon.wait_until(lambda: daemon.count() == first)
        other = tmp_path / "other.db"
        with contextlib.closing(
            sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
        ) as src:
            dst = sqlite3.connect(other)
            src.backup(dst)
            dst.close()
        os.replace(other, daemon.db)
        after = recorded(coordinators(daemon.env, 1, 700))
        daemon.wait_until(lambda: daemon.count() == first + after)
        daemon.wait_until(
            lambda: "DATABASE REPLACED" in (daemon.status()["incident"] or "")
        )
        assert daemon.stop() == 0

    def test_replaced_by_a_foreign_database_nothing_is_added(
        self, start_daemon, tmp_path
    ):
        """Someone else's database at the path is refused, untouched; the
        records wait in the ring until the path is fixed."""
        daemon = start_daemon()
        foreign = tmp_path / "foreign.db"
        with contextlib.closing(sqlite3.connect(foreign)) as db:
            db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        os.replace(foreign, daemon.db)
        sent = recorded(coordinators(daemon.env, 1, 800))
        daemon.wait_until(
            lambda: "another program" in (daemon.status()["last_error"] or "")
        )
        assert daemon.status()["lag_records"] == sent
        with contextlib.closing(sqlite3.connect(daemon.db)) as db:
            names = [
                r[0] for r in db.execute("SELECT name FROM sqlite_master")
            ]
        assert names == ["invoices"]
        os.unlink(daemon.db)
        daemon.wait_until(lambda: daemon.count() == sent)
        assert daemon.stop() == 0

    @pytest.mark.parametrize(
        "damage", ["garbage header", "truncated to zero", "garbage pages"]
    )
    def test_damaged_in_place_is_set_aside(
        self, start_daemon, daemon_env, damage
    ):
        """Damage written into the open file is noticed while running: the
        file is moved aside, a fresh one gets what is still in the ring."""
        env = dict(daemon_env, LIVEMON_INTEGRITY_CHECK_INTERVAL_S="0.5")
        daemon = start_daemon(env=env)
        first = recorded(coordinators(env, 1, 3000))
        daemon.wait_until(lambda: daemon.count() == first)
        size = os.path.getsize(daemon.db)
        with open(daemon.db, "r+b") as file:
            if damage == "garbage header":
                file.write(os.urandom(4096))
            elif damage == "truncated to zero":
                file.truncate(0)
            else:  # past the schema pages, where the events are
                file.seek(size // 2)
                file.write(os.urandom(size // 4))
        daemon.wait_until(lambda: glob.glob(daemon.db + ".damaged-*"))
        daemon.wait_until(
            lambda: "DATABASE DAMAGED" in (daemon.status()["incident"] or "")
        )
        after = recorded(coordinators(env, 2, 1500))
        daemon.wait_until(lambda: daemon.count() == after)
        assert daemon.stop() == 0
        assert daemon.count() == after
        assert "DATABASE DAMAGED" in harness.output(daemon)

    def test_damaged_before_start_is_reported_not_set_aside(
        self, start_daemon, daemon_env
    ):
        """A damaged database at start is the person's to judge: the daemon
        runs, says so, keeps the records in the ring, moves nothing."""
        first = start_daemon()
        sent = recorded(coordinators(first.env, 1, 3000))
        first.wait_until(lambda: first.count() == sent)
        assert first.stop() == 0
        size = os.path.getsize(first.db)
        with open(first.db, "r+b") as file:
            file.seek(size // 2)
            file.write(os.urandom(size // 4))
        daemon = start_daemon()
        more = recorded(coordinators(daemon.env, 1, 500))
        daemon.wait_until(
            lambda: "damaged" in (daemon.status()["last_error"] or "")
        )
        daemon.wait_until(lambda: daemon.status()["lag_records"] == more)
        assert not glob.glob(daemon.db + ".damaged-*")
        # (SIGTERM would wait STOP_DEADLINE_S for the database to heal.)
        daemon.stop(signal.SIGKILL)


class TestBadRecords:
    def test_unknown_feedback_action_is_kept(self, start_daemon):
        """A feedback code from a newer coordinator (a rolling upgrade)
        does not stop the drain: it is stored by number, nothing set
        aside, everything else stored as usual."""
        daemon = start_daemon()
        actions = np.zeros(3, rec.FEEDBACK_DTYPE)
        actions["timestamp_ns"] = 1
        actions["action"] = [
            rec.FeedbackAction.AGENT_CONFIDENCE,
            99,
            rec.FeedbackAction.QUALITY_ALERT,
        ]
        harness.put(daemon.env, "feedback", actions)
        sent = recorded(coordinators(daemon.env, 2, 1000))
        daemon.wait_until(lambda: daemon.count() == sent)
        daemon.wait_until(
            lambda: daemon.count("SELECT count(*) FROM adjustments") == 2
        )
        with contextlib.closing(sqlite3.connect(daemon.db)) as db:
            names = db.execute(
                "SELECT action FROM adjustments ORDER BY seq"
            ).fetchall()
        assert names == [("agent_confidence",), ("action_99",)]
        assert daemon.count("SELECT count(*) FROM alerts") == 1
        assert daemon.status()["quarantined_records"] == 0
        assert daemon.process.poll() is None
        assert daemon.stop() == 0

    def test_label_that_is_not_utf8_is_stored_replaced(
        self, start_daemon, tmp_path
    ):
        """Bytes that are not UTF-8 are stored as U+FFFD; stats and report
        read them without a traceback."""
        daemon = start_daemon()
        label = np.zeros(1, rec.LABEL_DTYPE)
        label["label_id"] = 12345
        label["length"] = 4
        label["text"][0, :4] = list(b"a\xff\xfeb")
        harness.put(daemon.env, "labels", label)
        records = harness.events(10)
        records["intent_category"] = 12345
        harness.put(daemon.env, "events", records)
        daemon.wait_until(lambda: daemon.count() == 10)
        assert (
            harness.count(
                daemon.db,
                "SELECT text = 'a' || char(65533, 65533) || 'b' "
                "FROM labels WHERE label_id = 12345",
            )
            == 1
        )
        for command in (["stats"], ["report", "--since", "1h"]):
            result = subprocess.run(
                [sys.executable, "-m", "livemon", *command],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr
        assert daemon.stop() == 0

    @pytest.mark.parametrize("cursor", ["head far ahead", "tail past head"])
    def test_lane_with_impossible_cursors_is_quarantined(
        self, start_daemon, cursor
    ):
        """A lane whose head is more than a lap ahead of its tail (or behind
        it) is not read and nothing of it is inserted; the other lanes go
        on; it is read again once its cursors make sense."""
        daemon = start_daemon()
        config = harness.config_of(daemon.env)
        ring = ipc.attach_ring(ipc.events_ring(config))
        writer = ring.writer()  # a live producer holds the lane
        try:
            writer.put_many(harness.events(5))
            daemon.wait_until(lambda: daemon.count() == 5)
            lane = next(
                i for i in range(16) if harness.lane_state(daemon.env, i).head
            )
            if cursor == "head far ahead":  # ~98,000 zero rows, before
                harness.set_cursors(daemon.env, lane, 5 + 98_000, None)
            else:
                harness.set_cursors(daemon.env, lane, None, 5 + 7)
            daemon.wait_until(lambda: daemon.status()["quarantined_lanes"])
            assert daemon.status()["quarantined_lanes"][0].startswith(
                f"{daemon.env['LIVEMON_RING']}:{lane} "
            )
            top = subprocess.run(
                [sys.executable, "-m", "livemon", "top", "--iterations", "1"],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "quarantined lane" in top.stdout, top.stdout + top.stderr
            sent = recorded(coordinators(daemon.env, 2, 1000))
            daemon.wait_until(lambda: daemon.count() == 5 + sent)
            if cursor == "tail past head":
                harness.set_cursors(daemon.env, lane, None, 5)
            # The producer's next put writes its own head again.
            writer.put_many(harness.events(3))
            daemon.wait_until(lambda: daemon.count() == 5 + sent + 3)
            daemon.wait_until(lambda: not daemon.status()["quarantined_lanes"])
        finally:
            writer.close()
            ring.close()
        assert daemon.process.poll() is None
        assert daemon.stop() == 0
        assert daemon.count() == 5 + sent + 3  # and no all-zero rows


class TestFilesystem:
    def test_full_filesystem_at_start_and_while_running(
        self, start_daemon, daemon_env, tmp_path
    ):
        """ENOSPC for the database, pidfile and status file: the daemon
        starts and keeps running, and catches up when space returns."""
        with mounts.tmpfs(tmp_path / "small", "16m") as mount:
            env = harness.on_small_disk(daemon_env, mount)
            env["LIVEMON_PIDFILE"] = str(mount / "u.db.pid")  # on the tmpfs
            filler = harness.fill(mount)
            daemon = start_daemon(env=env, wait_ready=False)
            sent = recorded(coordinators(env, 2, 2000))
            seen: list[str] = []  # output() hands out what is new

            def met_full_disk() -> bool:
                seen.append(harness.output(daemon))
                return "cannot write pidfile" in "".join(seen)

            daemon.wait_until(met_full_disk)  # started, and met the disk
            assert daemon.process.poll() is None
            assert not os.path.exists(mount / "u.db.pid")
            os.unlink(filler)
            daemon.wait_until(lambda: daemon.status().get("ready"))
            daemon.wait_until(lambda: daemon.count() == sent)
            filler = harness.fill(mount)  # full again, while running
            more = recorded(coordinators(env, 1, 3000))
            time.sleep(2)  # (the status file cannot be written either)
            assert daemon.count() < sent + more
            assert daemon.process.poll() is None
            os.unlink(filler)
            daemon.wait_until(lambda: daemon.count() == sent + more)
            daemon.wait_until(
                lambda: (
                    daemon.status()["last_error"] is None
                    and not daemon.status()["file_errors"]
                )
            )
            assert os.path.exists(mount / "u.db.pid")
            assert daemon.stop() == 0
            seen.append(harness.output(daemon))
            assert "database unavailable" in "".join(seen)

    def test_a_reader_pinning_the_wal_cannot_make_it_fill_the_disk(
        self, start_daemon, daemon_env, tmp_path
    ):
        """A reader's open transaction keeps the WAL from starting over:
        the daemon stops adding while the disk still holds what the
        checkpoint needs, and catches up once the reader lets go.  (It
        used to write on until the WAL took the last byte; after that no
        checkpoint and no commit could ever succeed.)"""
        with mounts.tmpfs(tmp_path / "small", "16m") as mount:
            env = harness.on_small_disk(daemon_env, mount)
            daemon = start_daemon(env=env)
            harness.put(env, "events", harness.events(10))
            daemon.wait_until(lambda: daemon.count() == 10)
            reader = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
            reader.execute("BEGIN")
            reader.execute(EVENTS).fetchone()  # a snapshot: the WAL pinned
            sent = 10
            while "DatabaseFull" not in (daemon.status()["last_error"] or ""):
                # (under the lane's 16,384: nothing may be refused here)
                assert sent < 15_000, "the WAL never reached the headroom"
                harness.put(env, "events", harness.events(100))
                sent += 100
                time.sleep(0.05)  # a commit each
            assert harness.free_bytes(mount) > 2**21
            assert daemon.count() < sent
            reader.rollback()
            reader.close()
            daemon.wait_until(lambda: daemon.count() == sent)
            daemon.wait_until(lambda: daemon.status()["last_error"] is None)
            assert daemon.stop() == 0
            assert "end the long read transaction" in harness.output(daemon)

    def test_read_only_filesystem_at_start(
        self, start_daemon, daemon_env, tmp_path
    ):
        """EROFS for every file beside the database: running, then caught
        up once the filesystem is writable again."""
        with mounts.tmpfs(tmp_path / "ro", "64m") as mount:
            env = harness.on_small_disk(daemon_env, mount)
            env["LIVEMON_PIDFILE"] = str(mount / "u.db.pid")
            first = start_daemon(env=env)
            assert first.stop() == 0
            subprocess.run(
                ["mount", "-o", "remount,ro", str(mount)], check=True
            )
            daemon = start_daemon(env=env, wait_ready=False)
            sent = recorded(coordinators(env, 1, 1500))
            seen: list[str] = []  # output() hands out what is new

            def met_read_only() -> bool:
                seen.append(harness.output(daemon))
                return "cannot write status file" in "".join(seen)

            daemon.wait_until(met_read_only)
            assert daemon.process.poll() is None  # running, not crashed
            subprocess.run(
                ["mount", "-o", "remount,rw", str(mount)], check=True
            )
            daemon.wait_until(
                lambda: daemon.status().get("pid") == daemon.process.pid
            )
            daemon.wait_until(lambda: daemon.count() == sent)
            assert daemon.stop(signal.SIGTERM) == 0
