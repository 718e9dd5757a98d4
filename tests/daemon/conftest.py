"""
Running the real daemon and real coordinator processes in tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from daemon.demo import start_coordinators

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


class DaemonRun:
    """One ``livemon-daemon start --foreground`` process and its files."""

    def __init__(self, env: dict[str, str], process: subprocess.Popen[str]):
        self.env = env
        self.process = process
        self.db = env["LIVEMON_DB"]
        self.status_file = env["LIVEMON_PIDFILE"] + ".status.json"

    def status(self) -> dict:
        """The daemon's published figures ({} before the first)."""
        try:
            with open(self.status_file) as file:
                return json.load(file)
        except (FileNotFoundError, ValueError):
            return {}

    def wait_until(self, predicate: Callable[[], bool], timeout_s=30.0):
        """Poll ``predicate`` until true; fail the test on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.process.poll() is None or predicate(), (
                f"daemon exited with {self.process.returncode}: "
                f"{self.process.stderr.read() if self.process.stderr else ''}"
            )
            time.sleep(0.05)
        log = self.env.get("LIVEMON_LOG_FILE")
        tail = pathlib.Path(log).read_text()[-3000:] if log else ""
        raise AssertionError(
            f"timed out after {timeout_s} s waiting; the daemon's log ends:"
            f"\n{tail}"
        )

    def count(self, sql="SELECT count(*) FROM events") -> int:
        """Run a counting query on the database (0 if it has no table)."""
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            ) as db:
                return int(db.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def stop(self, sig=signal.SIGTERM, timeout_s=30.0) -> int:
        """Signal the daemon and wait for it; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)


@pytest.fixture
def daemon_env(tmp_path, ring_name) -> dict[str, str]:
    """Environment for daemon and coordinators: own ring, db, state."""
    env = dict(os.environ)
    env.update(
        LIVEMON_RING=ring_name,
        LIVEMON_DB=str(tmp_path / "state" / "unified_monitoring.db"),
        LIVEMON_PIDFILE=str(tmp_path / "state" / "daemon.pid"),
        LIVEMON_BATCH_INTERVAL_S="0.05",
        LIVEMON_HEALTH_INTERVAL_S="0.5",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def start_daemon(daemon_env, tmp_path) -> Iterator[Callable[..., DaemonRun]]:
    """Start real daemons; whatever is left running is killed after."""
    runs: list[DaemonRun] = []

    def start(env=None, wait_ready=True, **popen) -> DaemonRun:
        env = dict(env or daemon_env)
        # Output goes to a file, not to pipes: nobody reads a pipe while the
        # daemon runs, so a chatty one (retry warnings) would fill 64 KiB
        # and block.  The file is the daemon's own log, so SIGHUP, which
        # reopens the log when stderr is a file, keeps writing to it.
        log = env.setdefault(
            "LIVEMON_LOG_FILE", str(tmp_path / f"daemon-{len(runs)}.log")
        )
        with open(log, "a") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "daemon", "start", "--foreground"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                **popen,
            )
        # Tests read process.stderr as before: a reader of the log, which
        # returns what was written so far and never blocks the daemon.
        process.stderr = open(log)  # noqa: SIM115 closed after the test
        run = DaemonRun(env, process)
        runs.append(run)
        if wait_ready:
            run.wait_until(
                lambda: (
                    run.status().get("pid") == process.pid
                    and run.status().get("ready")
                )
            )
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait(timeout=30)
        for stream in (run.process.stdout, run.process.stderr):
            if stream:
                stream.close()


# Coordinators started by the running test, reaped after it (below).
_STARTED: list[subprocess.Popen[str]] = []


def coordinators(env, count, requests):
    """Start ``count`` independent coordinator processes (livemon.demo).

    Every one is reaped after the test, even when an assertion fails
    before ``recorded`` waited for it: a process left running, or its
    pipe left open, would fail whichever test runs next on a
    ResourceWarning.
    """
    processes = start_coordinators(count, requests, env=env)
    _STARTED.extend(processes)
    return processes


@pytest.fixture(autouse=True)
def reap_coordinators() -> Iterator[None]:
    """Kill what ``coordinators`` started and the test left running; wait
    for each and close its pipe."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # the rest too
            process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


def recorded(processes, timeout_s=300) -> int:
    """Wait for coordinators; return how many records they stored."""
    total = 0
    for process in processes:
        out, _ = process.communicate(timeout=timeout_s)
        assert process.returncode == 0
        counters = json.loads(out)
        assert counters["failed"] == counters["unavailable"] == 0
        # Stored either way: in the ring, or spilled while it was full.
        total += counters["recorded"] + counters.get("spilled", 0)
    return total
