"""
The operator's views against a real daemon writing at that moment: report,
tail -f, stats, and top, the last also in a real terminal (tmux).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from livemon.cli import cli
from tests import other_users
from tests.daemon.conftest import ROOT, coordinators, recorded

DEMO_AGENTS = {"coder", "reviewer", "writer", "data_analyst"}


def invoke(env, *args):
    """Run ``livemon`` in-process with the daemon's LIVEMON_* settings."""
    live = {k: v for k, v in env.items() if k.startswith("LIVEMON_")}
    return CliRunner().invoke(
        cli, list(args), env=live, catch_exceptions=False
    )


def livemon(env, *args, **popen):
    """Start ``livemon`` as its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "livemon", *args], env=env, text=True, **popen
    )


class TestWhileTheDaemonWrites:
    def test_every_view_answers_during_a_drain(self, start_daemon):
        """report, tail, stats and top all answer while coordinators
        write and the daemon commits; afterwards the report counts every
        request that was stored."""
        run = start_daemon()
        workers = coordinators(run.env, 2, 6000)
        answered = set()
        while any(w.poll() is None for w in workers) or len(answered) < 4:
            for args in (
                ["report", "--since", "1h", "--format", "json"],
                ["tail", "-n", "3", "--json"],
                ["stats", "--json"],
                ["top", "--iterations", "1"],
            ):
                result = invoke(run.env, *args)
                if result.exit_code == 0:
                    answered.add(args[0])
                else:  # only a ring not yet created may delay stats/top
                    assert "no ring named" in result.output, result.output
        stored = recorded(workers)
        run.wait_until(lambda: run.count() == stored)
        assert answered == {"report", "tail", "stats", "top"}
        body = json.loads(invoke(run.env, "report", "--format", "json").output)
        requests = run.count(
            "SELECT count(*) FROM events WHERE event_type IN (0, 1)"
        )
        assert sum(t["requests"] for t in body["trend"]) == requests > 0
        assert {a["agent"] for a in body["agents"]} >= DEMO_AGENTS

    def test_stats_names_agents_and_sees_the_window(self, start_daemon):
        """stats reads the ring's window, with names from the database."""
        run = start_daemon()
        recorded(coordinators(run.env, 1, 3000))
        result = invoke(run.env, "stats", "--json")
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["window_records"] == 2048  # the policy's window
        assert {a["agent"] for a in body["agents"]} >= DEMO_AGENTS
        assert all(0 <= a["success_rate"] <= 1 for a in body["agents"])
        text = invoke(run.env, "stats").output
        assert "Per agent" in text and "coder" in text

    def test_tail_follows_commits(self, start_daemon):
        """tail -f prints each event once, as the daemon commits it, and
        Ctrl-C ends it quietly."""
        run = start_daemon()
        follower = livemon(
            run.env,
            "tail",
            "-f",
            "-n",
            "0",
            "--json",
            "--interval",
            "0.05",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it start before the first commit
        stored = recorded(coordinators(run.env, 2, 1500))
        run.wait_until(lambda: run.count() == stored)
        seen = [json.loads(follower.stdout.readline()) for _ in range(stored)]
        follower.send_signal(signal.SIGINT)
        rest, errors = follower.communicate(timeout=10)
        assert follower.returncode == 0
        assert "Traceback" not in errors
        assert rest == ""  # nothing beyond what was stored
        ids = [event["id"] for event in seen]
        assert ids == sorted(set(ids)) and len(ids) == stored

    def test_top_without_a_terminal_prints_frames(self, start_daemon):
        """Piped, top prints whole frames one after another."""
        run = start_daemon()
        recorded(coordinators(run.env, 1, 500))
        result = invoke(
            run.env, "top", "--iterations", "2", "--interval", "0.1"
        )
        assert result.exit_code == 0
        frames = result.output.split("livemon top")
        assert len(frames) == 3  # text before the first is empty
        for frame in frames[1:]:
            assert f"daemon    pid {run.process.pid}" in frame
            assert "overhead  p50" in frame and "coder" in frame
        assert "\x1b[" not in result.output  # no terminal codes in a pipe


class TestTopInATerminal:
    """Needs tmux (.ci/run installs it): a real terminal, as people see."""

    def tmux(self, *args):
        assert shutil.which("tmux"), "install tmux (apt-get install tmux)"
        return subprocess.run(
            ["tmux", "-L", self.server, *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def screen(self):
        """The pane's text, with the lines scrolled above it."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", "top").stdout

    def wait_for(self, text, timeout_s=20.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in (shown := self.screen()):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never shown; screen:\n{self.screen()}")

    @pytest.fixture
    def terminal(self, start_daemon, ring_name):
        """A 140x45 tmux terminal running top against a live daemon."""
        self.server = f"livemon-test-{ring_name}"
        run = start_daemon()
        recorded(coordinators(run.env, 1, 2000))
        exports = " ".join(
            f"{k}={v}"
            for k, v in run.env.items()
            if k.startswith("LIVEMON_") or k == "PYTHONPATH"
        )
        command = (
            f"env {exports} {sys.executable} -m livemon top "
            "--interval 0.2; echo top exited $?"
        )
        self.tmux(
            "new-session", "-d", "-s", "top", "-x", "140", "-y", "45", command
        )
        self.tmux("set-option", "-t", "top", "remain-on-exit", "on")
        yield run
        self.tmux("kill-server")

    @pytest.mark.parametrize("key", ["q", "C-c"])
    def test_shows_live_figures_and_quits_cleanly(self, terminal, key):
        """What a person sees: daemon health, ring, overhead, agents; q or
        Ctrl-C leaves the full screen and exits 0."""
        shown = self.wait_for("Per category")
        assert f"daemon    pid {terminal.process.pid}" in shown
        assert "ring      lanes" in shown and "overhead  p50" in shown
        assert "coder" in shown and "success_rate" in shown
        assert max(len(line) for line in shown.splitlines()) <= 140
        self.tmux("send-keys", "-t", "top", key)
        after = self.wait_for("top exited 0")
        assert "Per agent" not in after  # the normal screen is back


class TestTheDemo:
    def test_demo_runs_and_its_suggestions_work(self, tmp_path, ring_name):
        """The README's first command, small: every request lands, and the
        commands it suggests afterwards answer."""
        db = str(tmp_path / "demo.db")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("LIVEMON_RING", None)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon",
                "demo",
                "--ring",
                ring_name,
                "--db",
                db,
                "--coordinators",
                "2",
                "--requests",
                "300",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert "2 coordinator processes recorded 600 requests (0 dropped)" in (
            out
        )
        assert f"{db}: 600 requests in monitoring_events" in out
        with contextlib.closing(sqlite3.connect(db)) as stored:
            (runs,) = stored.execute(
                "SELECT count(*) FROM agent_runs"
            ).fetchone()
            (agents,) = stored.execute(
                "SELECT sum(json_array_length(suggested_agents)) FROM"
                " monitoring_events"
            ).fetchone()
        assert runs == agents  # one run per agent each request ran
        assert "agent runs (each agent's own" in out
        suggested = [
            line.split("livemon ", 1)[1].split()
            for line in out.splitlines()
            if "livemon report" in line or "livemon tail" in line
        ]
        assert [args[0] for args in suggested] == ["report", "tail"]
        for args in suggested:
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            assert "coder" in result.output


class TestOneLineErrors:
    @pytest.mark.parametrize(
        ("args", "code", "message"),
        [
            (["report", "--since", "99999999w"], 2, "outside what events"),
            (["report", "--since", "0001-01-01"], 2, "outside what events"),
            (["report", "--plot", "missing/dir/x.svg"], 1, "cannot write"),
        ],
    )
    def test_report_mistakes(self, tmp_path, args, code, message):
        """Out-of-range times and an unwritable chart path: a message and an
        exit code, no traceback."""
        from livemon.db.writer import open_writer

        db = tmp_path / "u.db"
        open_writer(str(db)).close()
        result = subprocess.run(
            [sys.executable, "-m", "livemon", *args, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr

    def test_stats_without_permission(self, daemon_env, ring_name):
        """stats as a user who may not open root's ring: one line, exit 1."""
        from livemon import ipc
        from livemon.config import load_config

        config = load_config(env=daemon_env)
        ipc.open_ring(config, ipc.events_ring(config)).close()
        ipc.open_ring(config, ipc.labels_ring(config)).close()
        result = other_users.run(
            65534, ["-m", "livemon", "stats"], daemon_env, home="/"
        )
        assert result.returncode == 1, result.stderr
        assert "permission denied" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
