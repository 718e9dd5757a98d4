"""
``livemon-daemon`` as people run it: status that tells a hung daemon, one
daemon's files per database, paths and permissions refused with one line.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from livemon import ipc
from livemon.config import load_config
from tests import other_users
from tests.conftest import unlink_rings


def run_cli(env, *args, user: int | None = None, timeout=60):
    """Run ``livemon-daemon`` (as ``user`` when given) and capture it."""
    if user is not None:
        return other_users.run(
            user, ["-m", "daemon", *args], env, timeout=timeout
        )
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def mode_of(path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


class TestStatus:
    def test_sigstopped_daemon_is_hung_with_its_own_exit_code(
        self, start_daemon
    ):
        """A stopped daemon's figures age; past --hung-after it is 'hung'
        (exit 4, documented in --help), and running again after SIGCONT."""
        daemon = start_daemon()
        fresh = run_cli(daemon.env, "status")
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert "figures 0 s old" in fresh.stdout or "s old" in fresh.stdout
        daemon.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3)
            hung = run_cli(daemon.env, "status", "--hung-after", "2")
            assert hung.returncode == 4, hung.stdout + hung.stderr
            assert "hung" in hung.stdout and "SIGSTOP" in hung.stdout
        finally:
            daemon.process.send_signal(signal.SIGCONT)
        daemon.wait_until(
            lambda: (
                run_cli(daemon.env, "status", "--hung-after", "2").returncode
                == 0
            )
        )
        assert "4  hung" in run_cli(daemon.env, "status", "--help").stdout
        assert daemon.stop() == 0

    def test_refused_daemon_leaves_no_segments(
        self, start_daemon, daemon_env, ring_name
    ):
        """Refused by the database lock, a daemon on a new ring removes the
        segments it had just created."""
        first = start_daemon()
        other = dict(daemon_env, LIVEMON_RING=ring_name + "-b")
        try:
            second = run_cli(other, "start", "--foreground")
            assert second.returncode == 1
            assert "already drains database" in second.stderr
            config = load_config({"ring": ring_name + "-b"}, env={})
            for name in ipc.segments(config):
                for suffix in ("", ".lanes"):
                    assert not os.path.exists(f"/dev/shm/{name}{suffix}")
        finally:
            unlink_rings(ring_name + "-b")
        assert first.stop() == 0


class TestFiles:
    def test_pid_status_and_log_are_per_database(self, daemon_env, tmp_path):
        """Two databases in one directory: stop --db b.db stops b only."""
        env = dict(daemon_env)
        del env["LIVEMON_PIDFILE"]
        env.pop("LIVEMON_DB")
        a, b = tmp_path / "state" / "a.db", tmp_path / "state" / "b.db"
        ring = env["LIVEMON_RING"]
        flags_a = ["--db", str(a), "--ring", ring]
        flags_b = ["--db", str(b), "--ring", ring + "-b"]
        try:
            for flags in (flags_a, flags_b):
                started = run_cli(env, "start", *flags)
                assert started.returncode == 0, started.stderr
            assert os.path.exists(f"{a}.pid") and os.path.exists(f"{b}.pid")
            assert os.path.exists(f"{a}.status.json")
            assert os.path.exists(f"{b}.log")
            stopped = run_cli(env, "stop", *flags_b)
            assert stopped.returncode == 0, stopped.stderr
            still = run_cli(env, "status", *flags_a)
            assert still.returncode == 0, still.stdout
            gone = run_cli(env, "status", *flags_b)
            assert gone.returncode == 3
        finally:
            run_cli(env, "stop", *flags_a)
            run_cli(env, "stop", *flags_b)
            unlink_rings(ring + "-b")

    def test_everything_is_owner_only(self, daemon_env, tmp_path):
        """State directory 0700; database, log, pid, status, backup 0600."""
        env = dict(daemon_env)
        del env["LIVEMON_PIDFILE"]
        db = tmp_path / "fresh" / "unified.db"
        env["LIVEMON_DB"] = str(db)
        started = run_cli(env, "start")
        assert started.returncode == 0, started.stderr
        try:
            backup = tmp_path / "fresh" / "copy.db"
            copied = subprocess.run(
                [sys.executable, "-m", "livemon", "backup", str(backup)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert copied.returncode == 0, copied.stderr
            assert mode_of(db.parent) == 0o700
            for path in (db, f"{db}.log", f"{db}.pid", f"{db}.status.json"):
                assert mode_of(path) == 0o600, path
            assert mode_of(backup) == 0o600
        finally:
            assert run_cli(env, "stop").returncode == 0

    @pytest.mark.parametrize(
        ("kind", "message"),
        [
            ("foreign", "another program's SQLite database"),
            ("devnull", "is not a file"),
            ("directory", "is a directory"),
            ("text", "is not an SQLite database"),
        ],
    )
    def test_what_is_no_livemon_database_is_refused_at_start(
        self, daemon_env, tmp_path, kind, message
    ):
        """One line, exit 1, at once; the file is left as it was."""
        path = {
            "foreign": tmp_path / "app.db",
            "devnull": pathlib.Path("/dev/null"),
            "directory": tmp_path,
            "text": tmp_path / "notes.txt",
        }[kind]
        if kind == "foreign":
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        elif kind == "text":
            path.write_text("shopping list\n" * 100)
        before = path.read_bytes() if path.is_file() else None
        env = dict(daemon_env, LIVEMON_DB=str(path))
        env["LIVEMON_PIDFILE"] = str(tmp_path / "x.pid")
        result = run_cli(env, "start", "--foreground", timeout=30)
        assert result.returncode == 1
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        if before is not None:
            assert path.read_bytes() == before

    @pytest.mark.parametrize(
        ("kind", "message"),
        [
            ("foreign", "another program's SQLite database"),
            ("directory", "is a directory"),
        ],
    )
    def test_detached_start_refuses_in_one_line_too(
        self, daemon_env, tmp_path, kind, message
    ):
        """``start`` without --foreground, as the README shows it, says what
        is wrong in one line, before it makes a log beside the path."""
        path = tmp_path / ("app.db" if kind == "foreign" else "a-directory")
        if kind == "foreign":
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        else:
            path.mkdir()
        env = dict(daemon_env, LIVEMON_DB=str(path))
        result = run_cli(env, "start", timeout=30)
        assert result.returncode == 1
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not os.path.exists(f"{path}.log")

    def test_detached_start_shows_why_the_daemon_exited(
        self, daemon_env, tmp_path
    ):
        """A refusal only the daemon itself finds (here the metrics extra
        missing: a stand-in package that fails to import, since the real
        one is installed for the tests) is shown, not just "see the log"."""
        fake = tmp_path / "site" / "prometheus_client"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('not here')\n")
        env = dict(
            daemon_env,
            PYTHONPATH=f"{tmp_path / 'site'}:{daemon_env['PYTHONPATH']}",
            LIVEMON_METRICS_ADDRESS="127.0.0.1:0",
        )
        result = run_cli(env, "start", timeout=60)
        assert result.returncode == 1
        assert "pip install 'livemon[metrics]'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize("owned_by_root", ["ring", "database"])
    def test_unprivileged_daemon_is_told_what_to_do(
        self, daemon_env, ring_name, owned_by_root
    ):
        """A daemon run as nobody, facing root's ring or database, says so
        in one line (no traceback) and exits 1."""
        if os.geteuid() != 0:
            pytest.fail("this test switches users: run it as root (CI is)")
        with tempfile.TemporaryDirectory(prefix="livemon-nobody-") as where:
            os.chmod(where, 0o777)
            env = dict(daemon_env)
            env["LIVEMON_DB"] = os.path.join(where, "nobody.db")
            env["LIVEMON_PIDFILE"] = os.path.join(where, "nobody.db.pid")
            config = load_config(env=env)
            if owned_by_root == "ring":
                ipc.open_ring(config, ipc.events_ring(config)).close()
            else:
                sqlite3.connect(env["LIVEMON_DB"]).close()
                os.chmod(env["LIVEMON_DB"], 0o600)
            result = run_cli(env, "start", "--foreground", user=65534)
        assert result.returncode == 1, result.stderr
        assert "permission denied" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
