"""
``livemon-daemon`` against what it reads going wrong: damaged pidfiles and
status files, database paths that can never work, a config file broken
under a running daemon.  One line and the right exit status each, never a
traceback, and a running daemon never dies of it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import tempfile
import time

import psutil
import pytest

from daemon.proc import start_ticks
from tests.daemon.test_cli import run_cli


def one_line(result, code, *words):
    """Exit ``code``, ``words`` in the output, no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert "Traceback" not in text, text
    for word in words:
        assert word in text, text


@pytest.fixture
def sleeper():
    """A real live process (not a daemon) to name in a pidfile."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def pretend_running(env, process, figures: str) -> None:
    """A pidfile naming ``process`` exactly, and status file ``figures``."""
    pidfile = env["LIVEMON_PIDFILE"]
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    with open(pidfile, "w") as file:
        file.write(f"{process.pid}\n{start_ticks(process.pid)}\n")
    with open(pidfile + ".status.json", "w") as file:
        file.write(figures)


class TestStatusFile:
    @pytest.mark.parametrize(
        "figures",
        [
            '"a string"',
            '{"published_at": "soon"}',
            '{"published_at": 1e300}',
            "[1, 2]",
        ],
        ids=["not-an-object", "time-not-a-number", "far-future", "list"],
    )
    def test_damaged_figures_mean_hung(self, daemon_env, sleeper, figures):
        """Figures that are no object, or no usable time, are no sign of
        life: 'hung' (exit 4), never a traceback or 'running'."""
        pretend_running(daemon_env, sleeper, figures)
        for args in (["status"], ["status", "--json"]):
            one_line(run_cli(daemon_env, *args), 4, "hung")

    def test_another_process_figures_are_not_this_ones(
        self, daemon_env, sleeper
    ):
        """Fresh figures published by another pid (a daemon before this
        one) do not make the process the pidfile names 'running'."""
        figures = {"pid": sleeper.pid + 1, "published_at": time.time()}
        pretend_running(daemon_env, sleeper, json.dumps(figures))
        one_line(run_cli(daemon_env, "status"), 4, "hung")


class TestPidfile:
    @pytest.mark.parametrize("content", ["-1 1.5", "-7 12"])
    def test_a_negative_pid_is_a_stale_pidfile(self, daemon_env, content):
        """psutil refuses pid -1 with ValueError: status and stop said it
        with a traceback."""
        pidfile = daemon_env["LIVEMON_PIDFILE"]
        os.makedirs(os.path.dirname(pidfile), exist_ok=True)
        with open(pidfile, "w") as file:
            file.write(content + "\n")
        one_line(run_cli(daemon_env, "status"), 3, "not running")
        one_line(run_cli(daemon_env, "stop"), 1, "no livemon daemon")


def unusable_paths(tmp_path):
    """(a directory, a FIFO, a symlink loop) in ``tmp_path``."""
    directory = tmp_path / "a-dir"
    directory.mkdir()
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop-a"
    os.symlink(tmp_path / "loop-b", loop)
    os.symlink(loop, tmp_path / "loop-b")
    return {"dir": directory, "fifo": fifo, "loop": loop}


class TestDatabasePath:
    @pytest.mark.parametrize("kind", ["dir", "fifo", "loop", "missing"])
    def test_retain_on_no_database(self, daemon_env, tmp_path, kind):
        """retain tells a path that holds no database in one line, and
        creates none (a typo made a fresh empty database before)."""
        path = unusable_paths(tmp_path).get(kind, tmp_path / "typo" / "x.db")
        env = dict(daemon_env, LIVEMON_DB=str(path))
        one_line(run_cli(env, "retain"), 1, str(path))
        assert not (tmp_path / "typo").exists()

    @pytest.mark.parametrize("kind", ["dir", "fifo", "loop"])
    def test_start_says_why_at_once(self, daemon_env, tmp_path, kind):
        """A detached start on a path that can never work says why in the
        terminal, not 'see <db>.log', and leaves no log beside it (for
        --db /dev/null that was /dev/null.log)."""
        path = unusable_paths(tmp_path)[kind]
        env = dict(daemon_env, LIVEMON_DB=str(path))
        env.pop("LIVEMON_PIDFILE")
        one_line(run_cli(env, "start", "--timeout", "10"), 1, str(path))
        assert not os.path.exists(f"{path}.log")


class TestReload:
    @pytest.mark.parametrize(
        "content",
        [b"livemon = 3\n", b"\xff\xfe\n", None],
        ids=["livemon-not-a-table", "not-utf8", "fifo"],
    )
    def test_sighup_with_a_broken_file_keeps_draining(
        self, daemon_env, start_daemon, tmp_path, content
    ):
        """The file turned into something load_config choked on (a
        TypeError, a UnicodeDecodeError: the daemon died) or a FIFO (the
        drain loop blocked in open for ever): the old settings stay."""
        path = tmp_path / "livemon.toml"
        path.write_text("batch_records = 100\n")
        daemon = start_daemon(dict(daemon_env, LIVEMON_CONFIG=str(path)))
        path.unlink()
        if content is None:
            os.mkfifo(path)
        else:
            path.write_bytes(content)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_until(
            lambda: (
                "configuration not reloaded"
                in pathlib.Path(daemon.env["LIVEMON_LOG_FILE"]).read_text()
            )
        )
        before = daemon.status()["published_at"]
        daemon.wait_until(lambda: daemon.status()["published_at"] > before)
        assert daemon.stop() == 0


class TestStart:
    def test_a_refused_start_says_why(
        self, daemon_env, start_daemon, tmp_path
    ):
        """A second daemon on the ring (its own database and pidfile, so
        the parent's pidfile check cannot see the first) is refused by
        the ring's lock in the child: the terminal gets that reason, not
        only 'exited with status 1: see the log'."""
        start_daemon()
        other = dict(daemon_env, LIVEMON_DB=str(tmp_path / "other.db"))
        other.pop("LIVEMON_PIDFILE")
        result = run_cli(other, "start", "--timeout", "20")
        one_line(result, 1, "already drains ring", "(log: ")


@pytest.fixture
def shared_dir():
    """A directory anyone may enter, for files of root read by nobody."""
    if os.geteuid() != 0:
        pytest.fail("this test switches users: run it as root (CI is)")
    with tempfile.TemporaryDirectory(prefix="livemon-advcli-") as where:
        os.chmod(where, 0o777)
        yield where


class TestAnotherUser:
    def test_stop_of_root_daemon_by_nobody(
        self, daemon_env, start_daemon, shared_dir
    ):
        """psutil's AccessDenied (no PermissionError) was a traceback;
        the daemon keeps running."""
        env = dict(
            daemon_env,
            LIVEMON_DB=os.path.join(shared_dir, "x.db"),
            LIVEMON_PIDFILE=os.path.join(shared_dir, "x.db.pid"),
        )
        daemon = start_daemon(env)
        os.chmod(env["LIVEMON_PIDFILE"], 0o644)
        result = run_cli(env, "stop", "--timeout", "5", user=65534)
        one_line(result, 1, "permission denied", str(daemon.process.pid))
        assert daemon.process.poll() is None
        assert daemon.stop() == 0

    @pytest.mark.parametrize("unreadable", ["pidfile", "status file"])
    def test_status_this_user_cannot_read_is_unknown(
        self, daemon_env, start_daemon, shared_dir, unreadable
    ):
        """An owner-only pidfile made a running daemon 'not running' (exit
        3), an owner-only status file made it 'hung, stuck': the truth is
        unknown to this user (exit 4), and the message says why."""
        env = dict(
            daemon_env,
            LIVEMON_DB=os.path.join(shared_dir, "x.db"),
            LIVEMON_PIDFILE=os.path.join(shared_dir, "x.db.pid"),
        )
        start_daemon(env)
        if unreadable == "status file":
            os.chmod(env["LIVEMON_PIDFILE"], 0o644)
        path = env["LIVEMON_PIDFILE"] + (
            ".status.json" if unreadable == "status file" else ""
        )
        result = run_cli(env, "status", user=65534)
        one_line(result, 4, "permission denied", path)
        assert "HUNG" not in result.stdout

    def test_retain_of_root_database_by_nobody(self, daemon_env, shared_dir):
        """The database this user may not open is told as such, with
        what to do, not as 'unable to open database file'."""
        path = os.path.join(shared_dir, "x.db")
        sqlite3.connect(path).close()
        os.chmod(path, 0o600)
        env = dict(daemon_env, LIVEMON_DB=path)
        result = run_cli(env, "retain", user=65534)
        one_line(result, 1, "permission denied", path)


class TestZombie:
    def test_a_zombie_is_not_running(self, daemon_env):
        """A daemon that exited but was not reaped yet (its parent did not
        wait) was 'hung' and 'did not stop within': it is not running."""
        zombie = subprocess.Popen(["true"])
        try:
            while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.01)
            pretend_running(daemon_env, zombie, "{}")
            one_line(run_cli(daemon_env, "status"), 3, "not running")
            one_line(run_cli(daemon_env, "stop"), 1, "no livemon daemon")
        finally:
            zombie.wait()


class TestMinFree:
    def test_more_headroom_than_the_disk_holds(self, daemon_env):
        """A db_min_free_bytes above the filesystem's size can never be
        met: the daemon started, said ready and stored nothing, for
        ever ('free space').  start refuses it, naming the setting."""
        env = dict(daemon_env, LIVEMON_DB_MIN_FREE_BYTES=str(2**80))
        try:
            for args in (
                ["start", "--timeout", "10"],
                ["start", "--foreground"],
            ):
                result = run_cli(env, *args, timeout=20)
                one_line(result, 2, "db_min_free_bytes", "filesystem")
        finally:
            run_cli(env, "stop")  # a daemon started when it was not refused
        assert not os.path.exists(env["LIVEMON_DB"])


class TestTimeouts:
    @pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e308"])
    def test_stop_refuses_before_signalling(
        self, daemon_env, start_daemon, value
    ):
        """psutil's wait refused these after SIGTERM was sent: a traceback,
        and the daemon stopping anyway.  Now: a usage error, no signal."""
        daemon = start_daemon()
        result = run_cli(daemon_env, "stop", "--timeout", value)
        one_line(result, 2, "--timeout")
        time.sleep(0.5)
        assert daemon.process.poll() is None
        assert daemon.stop() == 0

    @pytest.mark.parametrize("value", ["nan", "-5"])
    def test_start_refuses_a_timeout_it_cannot_wait(self, daemon_env, value):
        """nan and negative timeouts started a daemon, then terminated it
        at once and said it was not ready 'in nan s'."""
        result = run_cli(daemon_env, "start", "--timeout", value)
        one_line(result, 2, "--timeout")
        assert not os.path.exists(daemon_env["LIVEMON_DB"] + ".log")

    def test_hung_after_nan_is_refused(self, daemon_env):
        """nan made every daemon 'running' (age > nan is false)."""
        one_line(run_cli(daemon_env, "status", "--hung-after", "nan"), 2)


class TestFifo:
    def test_a_fifo_pidfile_is_stale_not_waited_on(self, daemon_env):
        """open() of a FIFO waits for a writer: status, stop and start
        hung for ever on a pidfile path that is one."""
        pidfile = daemon_env["LIVEMON_PIDFILE"]
        os.makedirs(os.path.dirname(pidfile), exist_ok=True)
        os.mkfifo(pidfile)
        one_line(run_cli(daemon_env, "status", timeout=20), 3, "not running")
        one_line(run_cli(daemon_env, "stop", timeout=20), 1, "no livemon")


class TestDirectories:
    @pytest.mark.parametrize("name", ["archive_dir", "spill_dir"])
    def test_a_file_where_a_directory_goes(self, daemon_env, tmp_path, name):
        """archive_dir naming a file started a daemon whose retention pass
        failed as 'database unavailable (FileExistsError)', the store
        reopened, status silent, the next try an hour later."""
        path = tmp_path / "a-file"
        path.write_text("")
        env = dict(daemon_env, **{f"LIVEMON_{name.upper()}": str(path)})
        try:
            result = run_cli(env, "start", "--timeout", "10", timeout=20)
        finally:
            run_cli(env, "stop")  # a daemon started when it was not refused
        one_line(result, 2, name, str(path), "not a directory")


class TestDemo:
    def test_the_demo_keeps_off_your_settings(self, tmp_path, ring_name):
        """'Uses its own ring and database (not your LIVEMON_* settings)':
        the others came through, to it and to the daemon it started (your
        pidfile and status file; your ClickHouse, collector and webhook
        got demo data)."""
        real = tmp_path / "real"
        env = dict(
            os.environ,
            LIVEMON_PIDFILE=str(real / "daemon.pid"),
            LIVEMON_LOG_FILE=str(real / "daemon.log"),
        )
        db = tmp_path / "demo" / "u.db"
        result = run_cli(
            env,
            "demo",
            "--ring",
            ring_name,
            "--db",
            str(db),
            "--coordinators",
            "1",
            "--requests",
            "100",
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 coordinator processes recorded 100" in result.stdout
        assert db.exists() and not real.exists()


class TestReopenLog:
    @pytest.mark.parametrize("where", ["a-dir", "missing/x.log"])
    def test_a_log_file_it_cannot_open_is_no_crash(
        self, daemon_env, tmp_path, where
    ):
        """SIGHUP reopens the log at the configured path (after rotation):
        a log_file changed to a directory or into a missing one killed
        the detached daemon ('Is a directory')."""
        (tmp_path / "a-dir").mkdir()
        path = tmp_path / "livemon.toml"
        path.write_text(f'log_file = "{tmp_path / "first.log"}"\n')
        env = dict(daemon_env, LIVEMON_CONFIG=str(path))
        try:
            one_line(run_cli(env, "start", "--timeout", "20"), 0, "started")
            pidfile = pathlib.Path(env["LIVEMON_PIDFILE"])
            pid = int(pidfile.read_text().split()[0])
            path.write_text(f'log_file = "{tmp_path / where}"\n')
            for _ in range(2):  # the first takes the path, the next opens it
                os.kill(pid, signal.SIGHUP)
                time.sleep(1)
            log = (tmp_path / "first.log").read_text()
            assert "cannot reopen the log" in log, log
            one_line(run_cli(env, "status"), 0, "running")
        finally:
            run_cli(env, "stop")
