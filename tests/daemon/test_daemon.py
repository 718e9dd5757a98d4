"""
The real daemon with real coordinator processes: exactly once through
SIGKILL and SIGTERM, database trouble survived, one daemon per ring.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from livemon.config import Config
from tests.daemon import harness
from tests.daemon.conftest import ROOT, coordinators, recorded

NO_DUPLICATES = "SELECT count(*) - count(DISTINCT request_id) FROM events"
UNRESOLVED = (
    "SELECT count(*) FROM monitoring_events WHERE intent_category IS NULL "
    "OR routing_strategy IS NULL OR suggested_agents = '[]' "
    "OR (success = 0 AND error IS NULL)"
)


class TestPipeline:
    def test_independent_coordinators_land_exactly_once(self, start_daemon):
        """Every record sent is stored once, every label resolved."""
        daemon = start_daemon()  # started before any coordinator
        sent = recorded(coordinators(daemon.env, 3, 3000))
        daemon.wait_until(lambda: daemon.count() == sent)
        assert daemon.stop() == 0
        assert daemon.count() == sent == 9000
        assert daemon.count(NO_DUPLICATES) == 0
        assert daemon.count(UNRESOLVED) == 0
        assert daemon.count("SELECT count(*) FROM health") >= 1

    def test_daemon_started_after_the_coordinators(
        self, start_daemon, daemon_env
    ):
        """Coordinators create the ring; a later daemon drains it all."""
        sent = recorded(coordinators(daemon_env, 2, 2000))
        daemon = start_daemon()
        daemon.wait_until(lambda: daemon.count() == sent)
        assert daemon.stop() == 0
        assert daemon.count(NO_DUPLICATES) == 0

    def test_sigterm_commits_everything_written_before_it(
        self, start_daemon, daemon_env
    ):
        """SIGTERM right after start: the final drain takes it all."""
        sent = recorded(coordinators(daemon_env, 2, 4000))
        daemon = start_daemon()
        assert daemon.stop(signal.SIGTERM) == 0
        assert daemon.count() == sent
        assert not os.path.exists(daemon.env["LIVEMON_PIDFILE"])

    def test_sigkill_mid_stream_loses_and_duplicates_nothing(
        self, start_daemon, daemon_env
    ):
        """Kill -9 while coordinators write; a new daemon resumes."""
        daemon = start_daemon()
        load = coordinators(daemon_env, 2, 6000)
        daemon.wait_until(lambda: daemon.count() > 500)
        daemon.stop(signal.SIGKILL)
        sent = recorded(load)
        again = start_daemon()
        again.wait_until(lambda: again.count() == sent)
        assert again.stop() == 0
        assert again.count() == sent
        assert again.count(NO_DUPLICATES) == 0

    def test_second_daemon_is_refused(self, start_daemon, daemon_env):
        """One daemon per ring and database; the second says why."""
        first = start_daemon()
        second = start_daemon(wait_ready=False)
        assert second.process.wait(timeout=30) == 1
        assert "already drains" in second.process.stderr.read()
        assert first.process.poll() is None
        other_db = dict(daemon_env, LIVEMON_DB=daemon_env["LIVEMON_DB"] + "2")
        third = start_daemon(env=other_db, wait_ready=False)
        assert third.process.wait(timeout=30) == 1
        assert first.stop() == 0

    def test_sighup_rereads_and_keeps_running(self, start_daemon):
        """SIGHUP reloads configuration without stopping the drain."""
        daemon = start_daemon()
        daemon.process.send_signal(signal.SIGHUP)
        sent = recorded(coordinators(daemon.env, 1, 500))
        daemon.wait_until(lambda: daemon.count() == sent)
        assert daemon.stop() == 0
        assert "SIGHUP: configuration reread" in daemon.process.stderr.read()


class TestDatabaseTrouble:
    def catch_up_after(self, daemon, sent_before_fix, fix):
        """Trouble is reported and data waits in the ring; then fixed."""
        daemon.wait_until(
            lambda: (
                daemon.status().get("last_error")
                and daemon.status()["lag_records"] > 0
            )
        )
        assert daemon.count() < sent_before_fix
        assert daemon.process.poll() is None  # no crash loop
        fix()
        daemon.wait_until(lambda: daemon.count() == sent_before_fix)
        daemon.wait_until(lambda: daemon.status().get("last_error") is None)
        assert daemon.stop() == 0

    def test_lock_held_by_another_writer(self, start_daemon):
        """A long write transaction elsewhere: retry, then catch up."""
        daemon = start_daemon()
        blocker = sqlite3.connect(daemon.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        sent = recorded(coordinators(daemon.env, 1, 1000))
        self.catch_up_after(daemon, sent, lambda: blocker.execute("COMMIT"))
        blocker.close()

    def test_file_size_limit(self, start_daemon):
        """Disk full (RLIMIT_FSIZE): writes fail, nothing is lost."""
        daemon = start_daemon()
        size = os.path.getsize(daemon.db)
        limit = size + 64 * 1024

        process = psutil.Process(daemon.process.pid)
        _, hard = process.rlimit(resource.RLIMIT_FSIZE)
        # Only the soft limit moves: raising it back needs no privilege.
        process.rlimit(resource.RLIMIT_FSIZE, (limit, hard))
        sent = recorded(coordinators(daemon.env, 2, 3000))

        def lift():
            process.rlimit(resource.RLIMIT_FSIZE, (hard, hard))

        self.catch_up_after(daemon, sent, lift)

    def test_read_only_filesystem(self, start_daemon, daemon_env, tmp_path):
        """The database's filesystem turns read-only, then back."""
        if os.geteuid() != 0:
            pytest.fail("this test mounts a tmpfs: run it as root (CI is)")
        mount = tmp_path / "ro"
        mount.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
            check=True,
        )
        try:
            env = harness.on_small_disk(daemon_env, mount)
            daemon = start_daemon(env=env)
            daemon.stop()
            subprocess.run(
                ["mount", "-o", "remount,ro", str(mount)], check=True
            )
            daemon = start_daemon(env=env)
            sent = recorded(coordinators(env, 1, 1000))
            self.catch_up_after(
                daemon,
                sent,
                lambda: subprocess.run(
                    ["mount", "-o", "remount,rw", str(mount)], check=True
                ),
            )
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)


class TestCli:
    def run_cli(self, env, *args):
        """Run ``livemon-daemon`` as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    def test_start_status_stop(self, daemon_env):
        """Detached start, status by identity, stop with final drain."""
        started = self.run_cli(daemon_env, "start")
        assert started.returncode == 0, started.stderr
        try:
            assert "started" in started.stdout
            again = self.run_cli(daemon_env, "start")
            assert again.returncode == 1
            assert "already running" in again.stderr
            sent = recorded(coordinators(daemon_env, 1, 300))
            time.sleep(0.5)
            status = self.run_cli(daemon_env, "status", "--json")
            assert status.returncode == 0
            import json

            report = json.loads(status.stdout)
            assert report["running"] and report["lanes"] == Config.lanes
            assert report["drained"] == sent
            assert report["rss_bytes"] > 0 and report["uptime_s"] >= 0
            text = self.run_cli(daemon_env, "status").stdout
            assert "running" in text and "drained" in text
        finally:
            stopped = self.run_cli(daemon_env, "stop")
        assert stopped.returncode == 0, stopped.stderr
        status = self.run_cli(daemon_env, "status")
        assert status.returncode == 3
        assert "not running" in status.stdout

    def test_stale_pidfile_is_not_mistaken_for_the_daemon(self, daemon_env):
        """A pidfile naming a live but different process is stale."""
        os.makedirs(os.path.dirname(daemon_env["LIVEMON_PIDFILE"]))
        with open(daemon_env["LIVEMON_PIDFILE"], "w") as file:
            file.write(f"{os.getpid()}\n12345.0\n")  # our pid, wrong time
        assert self.run_cli(daemon_env, "status").returncode == 3
        stop = self.run_cli(daemon_env, "stop")
        assert stop.returncode == 1 and "no livemon daemon" in stop.stderr

    @pytest.mark.parametrize(
        ("args", "code", "message"),
        [
            (["start", "--ring", "../evil"], 2, "unsafe ring name"),
            (["status", "--config", "/nonexistent.toml"], 2, "cannot read"),
            (["start", "--synchronous", "OFF"], 2, "OFF"),
            (["frobnicate"], 2, "No such command"),
        ],
    )
    def test_misuse_is_exit_2_without_traceback(
        self, daemon_env, args, code, message
    ):
        """Usage errors exit 2 with a message, never a traceback."""
        result = self.run_cli(daemon_env, *args)
        assert result.returncode == code
        assert message in result.stderr
        assert "Traceback" not in result.stderr


class TestFeedbackStored:
    def test_actions_and_alerts_land_with_their_texts(
        self, start_daemon, daemon_env
    ):
        """Every feedback action becomes a row with the statistic behind it."""
        from livemon import Monitor
        from livemon.feedback import FeedbackLoop
        from tests.livemon.feedback.test_loop import requests

        daemon = start_daemon()
        with Monitor(daemon_env["LIVEMON_RING"]) as monitor:
            agent = monitor.intern("flaky_agent")
            writer = monitor._rings[0].writer()
            records = requests(120, success=0.4, quality=0.6, agent=agent)
            records["intent_category"] = monitor.intern("code")
            before = requests(400, quality=0.95, agent=agent)
            before["intent_category"] = monitor.intern("code")
            before["timestamp_ns"] -= 1000
            writer.put_many(np.concatenate([before, records]))
            loop = FeedbackLoop(monitor)
            actions = loop.update()
            writer.close()
            loop.close()
        assert len(actions) >= 2
        daemon.wait_until(
            lambda: (
                daemon.count("SELECT count(*) FROM adjustments")
                + daemon.count("SELECT count(*) FROM alerts")
                == len(actions)
            )
        )
        assert daemon.stop() == 0
        with contextlib.closing(sqlite3.connect(daemon.db)) as db:
            row = db.execute(
                "SELECT action, subject, old_value, new_value, samples "
                "FROM adjustment_log WHERE action = 'agent_confidence'"
            ).fetchone()
            lowered = next(a for a in actions if a.subject == agent)
            assert row == (
                "agent_confidence",
                "flaky_agent",
                1.0,
                pytest.approx(0.9),
                lowered.samples,  # the outcomes since the detected change
            )
            alert = db.execute(
                "SELECT action, subject, message FROM alert_log"
            ).fetchone()
            assert alert[:2] == ("quality_alert", "code")
            assert "quality regression" in alert[2]
