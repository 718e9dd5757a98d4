"""
A rolling upgrade from the previous release (cd12de8, extracted from git
and run from its own tree) to this one, end to end with real daemons and
real coordinator processes sharing the rings, in both orders: nothing is
lost, and every request and agent run is stored exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import time

import pytest

from tests import previous_release

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "agent_worker.py"


@pytest.fixture(scope="module")
def old_release(tmp_path_factory) -> pathlib.Path:
    """The previous release's tree (ringbuf, livemon, daemon)."""
    where = tmp_path_factory.mktemp("previous-release")
    return previous_release.extract(where, "ringbuf", "livemon", "daemon")


class Host:
    """One host's ring and database, and the processes that share them.

    ``release`` is ``"old"`` (the previous release's tree first on the
    path, and the working directory, so ``-m daemon`` finds it) or
    ``"new"`` (this checkout).
    """

    def __init__(self, tmp_path, ring_name, old_release, **settings):
        self.tmp_path = tmp_path
        self.old_release = old_release
        state = tmp_path / "state"
        self.db = str(state / "unified_monitoring.db")
        self.pidfile = str(state / "daemon.pid")
        self.env = dict(os.environ)
        self.env.update(
            LIVEMON_RING=ring_name,
            LIVEMON_DB=self.db,
            LIVEMON_PIDFILE=self.pidfile,
            LIVEMON_BATCH_INTERVAL_S="0.05",
            LIVEMON_SPILL_MIN_FREE_BYTES="0",
            **{f"LIVEMON_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.daemons: list[subprocess.Popen[str]] = []
        self.logs: list[pathlib.Path] = []
        self.workers: list[subprocess.Popen[str]] = []

    def _env(self, release: str) -> tuple[dict[str, str], str]:
        tree = self.old_release if release == "old" else ROOT
        return dict(self.env, PYTHONPATH=str(tree)), str(tree)

    def start_daemon(self, release: str) -> subprocess.Popen[str]:
        """Start a daemon of ``release``; return once it publishes."""
        env, cwd = self._env(release)
        log = self.tmp_path / f"daemon-{len(self.daemons)}-{release}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "daemon", "start", "--foreground"],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.daemons.append(process)
        self.logs.append(log)
        self.wait_until(
            lambda: self.status().get("pid") == process.pid, process, log
        )
        return process

    def stop_daemon(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM: the daemon drains what is pending, then exits 0."""
        process.terminate()
        assert process.wait(timeout=60) == 0

    def start_workers(
        self, release: str, count: int, requests: int, seed: int = 0
    ) -> list[subprocess.Popen[str]]:
        """Start coordinators of ``release``, pausing as they go."""
        env, cwd = self._env(release)
        started = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    str(WORKER),
                    str(requests),
                    str(seed + i),
                    "50",
                    "0.05",
                ],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(count)
        ]
        self.workers += started
        return started

    def finish(self, workers: list[subprocess.Popen[str]], release: str):
        """Wait for coordinators; return their counters (checked)."""
        tree = str(self.old_release if release == "old" else ROOT)
        found = []
        for process in workers:
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0
            counters = json.loads(out)
            assert counters["livemon"].startswith(tree), counters["livemon"]
            assert counters["dropped"] == counters["unavailable"] == 0
            assert counters["failed"] == 0
            assert counters.get("agent_runs_dropped", 0) == 0
            assert counters.get("agent_runs_unavailable", 0) == 0
            found.append(counters)
        return found

    def status(self) -> dict:
        """The running daemon's status file ({} if none yet)."""
        try:
            with open(self.pidfile + ".status.json") as file:
                return json.load(file)
        except (OSError, ValueError):
            return {}

    def count(self, sql: str) -> int:
        """One number from the database (-1 if it cannot answer yet)."""
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            ) as db:
                return int(db.execute(sql).fetchone()[0] or 0)
        except sqlite3.Error:
            return -1

    def wait_until(self, predicate, process=None, log=None, timeout_s=120):
        """Poll ``predicate``; fail with the daemon's log on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.05)
        text = pathlib.Path(log).read_text() if log else ""
        raise AssertionError(f"timed out waiting\n{text}")

    def close(self) -> None:
        """Kill and reap whatever is still running."""
        for process in self.daemons + self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout:
                process.stdout.close()


@pytest.fixture
def host(tmp_path, ring_name, old_release):
    """A host with the previous release's default geometry (16 lanes of
    16,384 records, labels 256 a lane): the config of a real host that
    never set them; this release's defaults differ."""
    made = Host(tmp_path, ring_name, old_release)
    yield made
    made.close()


def stored(counters: list[dict], what: str = "") -> int:
    """Records (``what=""``) or agent runs (``"agent_runs_"``) stored."""
    return sum(
        c.get(f"{what}recorded", 0) + c.get(f"{what}spilled", 0)
        for c in counters
    )


EVENTS = "SELECT count(*) FROM events"
DISTINCT_EVENTS = (
    "SELECT count(*) FROM (SELECT DISTINCT pid, request_id FROM events)"
)
RUNS = "SELECT count(*) FROM agent_runs"
DISTINCT_RUNS = (
    "SELECT count(*) FROM (SELECT DISTINCT pid, request_id, agent "
    "FROM agent_runs)"
)
ORPHAN_RUNS = (
    "SELECT count(*) FROM agent_runs AS a WHERE NOT EXISTS (SELECT 1 FROM "
    "events AS e WHERE e.request_id = a.request_id AND e.pid = a.pid)"
)


def assert_exactly_once(host: Host, requests: int, runs: int) -> None:
    """Every request and run stored, none twice, each run's request too."""
    host.wait_until(lambda: host.count(EVENTS) == requests)
    host.wait_until(lambda: host.count(RUNS) == runs)
    assert host.count(DISTINCT_EVENTS) == requests
    assert host.count(DISTINCT_RUNS) == runs
    assert host.count(ORPHAN_RUNS) == 0


class TestRollingUpgrade:
    """The previous release and this one on one host's rings."""

    def test_daemon_first(self, host):
        """Old daemon and old coordinators; the daemon is upgraded while
        the old coordinators go on; then new coordinators join.  The old
        coordinators' records, written into rings the new daemon regrows
        to its own geometry, are all kept."""
        old_daemon = host.start_daemon("old")
        old_workers = host.start_workers("old", 2, 400)
        host.wait_until(lambda: host.count(EVENTS) > 50)
        host.stop_daemon(old_daemon)
        before = host.count(EVENTS)
        new_daemon = host.start_daemon("new")
        new_workers = host.start_workers("new", 2, 300, seed=10)
        old = host.finish(old_workers, "old")
        new = host.finish(new_workers, "new")
        assert stored(new, "agent_runs_") == 2 * 300 * 2
        assert_exactly_once(
            host, stored(old) + stored(new), stored(new, "agent_runs_")
        )
        host.stop_daemon(new_daemon)
        # The new daemon regrew the rings under the old workers, and
        # drained what they wrote on into the old segment afterwards.
        assert "new rings made" in host.logs[-1].read_text()
        first_epoch = "SELECT epoch FROM events ORDER BY id LIMIT 1"
        old_epoch = host.count(first_epoch)
        in_old = host.count(
            f"SELECT count(*) FROM events WHERE epoch = {old_epoch}"
        )
        assert in_old > before
        assert in_old < host.count(EVENTS)  # the new workers' are elsewhere

    def test_coordinators_first(self, host):
        """Old daemon; new coordinators (with agent runs, more than their
        small agents lanes hold) and old ones; then the daemon is
        upgraded.  The runs the old daemon could not drain wait in the
        agents ring and spill, and the new daemon stores each once."""
        host.env["LIVEMON_CAPACITY_RECORDS"] = "256"  # runs spill
        old_daemon = host.start_daemon("old")
        new_workers = host.start_workers("new", 2, 300)
        old_workers = host.start_workers("old", 1, 300, seed=10)
        new = host.finish(new_workers, "new")
        old = host.finish(old_workers, "old")
        assert sum(c["agent_runs_spilled"] for c in new) > 0
        host.wait_until(lambda: host.count(EVENTS) == stored(old + new))
        assert host.count(RUNS) == -1  # the old schema has no such table
        host.stop_daemon(old_daemon)
        new_daemon = host.start_daemon("new")
        assert_exactly_once(
            host, stored(old) + stored(new), stored(new, "agent_runs_")
        )
        host.wait_until(
            lambda: host.status()["agent_runs"]["spill"]["records"] == 0
        )
        host.stop_daemon(new_daemon)

    def test_previous_daemon_on_a_migrated_database(self, host):
        """Migrations are additive: the previous daemon, put back on a
        database this release migrated, stores its requests there."""
        new_daemon = host.start_daemon("new")
        host.finish(host.start_workers("new", 1, 100), "new")
        host.wait_until(lambda: host.count(RUNS) == 200)
        host.stop_daemon(new_daemon)
        old_daemon = host.start_daemon("old")
        old = host.finish(host.start_workers("old", 1, 100, seed=5), "old")
        host.wait_until(lambda: host.count(EVENTS) == 100 + stored(old))
        host.stop_daemon(old_daemon)
        assert host.count(RUNS) == 200
