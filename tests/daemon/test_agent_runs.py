"""
Agent runs from the agents ring and its spill into ``agent_runs``, exactly
once: a real daemon with real coordinator processes, and the drainer on
real rings and a real SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import sqlite3
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringbuf
from daemon.agent_runs import AgentSpillReplayer
from daemon.drain import Drainer
from daemon.store import Store
from livemon import Monitor, ipc
from livemon import record as rec
from livemon.cli import cli
from livemon.config import load_config
from livemon.spill import SPILL_LANE_BASE
from tests.conftest import unlink_rings

WORKER = pathlib.Path(__file__).resolve().parents[1] / "agent_worker.py"


def start_workers(env, count: int, requests: int, *pace: str):
    """Start ``count`` coordinator processes (``pace``: pause every n
    requests, for s seconds)."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-P",
                str(WORKER),
                str(requests),
                str(seed),
                *pace,
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(count)
    ]


def run_workers(env, count: int, requests: int) -> list[dict]:
    """Run ``count`` coordinator processes to the end; their counters."""
    return finish(start_workers(env, count, requests))


def finish(processes) -> list[dict]:
    """Wait for coordinator processes; return their counters."""
    found = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        found.append(json.loads(out))
    return found


def stored_runs(counters: list[dict]) -> int:
    """Agent runs the coordinators stored (ring or spill)."""
    return sum(
        c.get("agent_runs_recorded", 0) + c.get("agent_runs_spilled", 0)
        for c in counters
    )


def query(db_path: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the database, read-only."""
    with contextlib.closing(
        sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    ) as db:
        return db.execute(sql).fetchall()


class TestDaemon:
    """The real daemon drains agent runs with the requests."""

    def test_every_run_once_linked_to_its_request(
        self, start_daemon, daemon_env
    ):
        """Three coordinators, 300 requests each: 1,800 runs, each once,
        each naming a stored request, texts resolved in the view."""
        run = start_daemon()
        counters = run_workers(daemon_env, 3, 300)
        expected = stored_runs(counters)
        assert expected == 1800
        assert all(c["agent_runs_dropped"] == 0 for c in counters)
        run.wait_until(
            lambda: run.count("SELECT count(*) FROM agent_runs") == expected
        )
        run.wait_until(lambda: run.count() == 900)
        assert run.stop() == 0
        [(orphans,)] = query(
            run.db,
            "SELECT count(*) FROM agent_runs AS a WHERE NOT EXISTS "
            "(SELECT 1 FROM events AS e WHERE e.request_id = a.request_id)",
        )
        assert orphans == 0
        [(distinct,)] = query(
            run.db,
            "SELECT count(DISTINCT epoch || ':' || lane || ':' || seq)"
            " FROM agent_runs",
        )
        assert distinct == expected
        view = dict(
            query(
                run.db,
                "SELECT outcome, count(*) FROM agent_runs_view GROUP BY 1",
            )
        )
        assert view == {
            "selected": 450,
            "discarded": 450,
            "merged": 450,
            "cancelled": 450,
        }
        agents = {
            r[0] for r in query(run.db, "SELECT agent FROM agent_runs_view")
        }
        assert agents == {"analyst_a", "analyst_b", "coder", "reviewer"}
        [(errors,)] = query(
            run.db,
            "SELECT count(*) FROM agent_runs_view WHERE error = 'timeout'",
        )
        assert errors == 3 * len([i for i in range(300) if i % 7 == 0])
        # The per-agent rollups count each run once.
        [(rolled,)] = query(run.db, "SELECT sum(runs) FROM rollup_agent_runs")
        assert rolled == expected

    def test_top_and_report_show_runs(self, start_daemon, daemon_env):
        """``top`` shows the agent runs drained; ``report`` the agents'
        figures from their runs."""
        run = start_daemon()
        expected = stored_runs(run_workers(daemon_env, 1, 200))
        run.wait_until(
            lambda: run.count("SELECT count(*) FROM agent_runs") == expected
        )
        run.wait_until(
            lambda: run.status()["agent_runs"]["drained"] == expected
        )
        top = CliRunner().invoke(
            cli,
            ["top", "--iterations", "1"],
            env=daemon_env,
            catch_exceptions=False,
        )
        assert f"agents    runs drained {expected:,}  lag 0" in top.output
        report = CliRunner().invoke(
            cli,
            [
                "report",
                "--since",
                "1h",
                "--format",
                "json",
                "--table",
                "agents",
            ],
            env=daemon_env,
            catch_exceptions=False,
        )
        assert report.exit_code == 0, report.output
        agents = {a["agent"]: a for a in json.loads(report.output)["agents"]}
        assert {a["source"] for a in agents.values()} == {"runs"}
        assert sum(a["requests"] for a in agents.values()) == expected
        assert run.stop() == 0

    def test_agents_ring_of_another_layout(self, start_daemon, daemon_env):
        """An agents ring this release cannot read (another layout under
        the name): the daemon drains the requests, says why in status,
        logs it once; the coordinators lose only the runs, counted."""
        other = np.dtype([("x", "<i8")])
        name = daemon_env["LIVEMON_RING"] + ".agents"
        with ringbuf.Ring.create(name, other, 2, 8):
            run = start_daemon()
            counters = run_workers(daemon_env, 1, 100)
            run.wait_until(lambda: run.count() == 100)
            assert counters[0]["agent_runs_unavailable"] == 200
            status = run.status()["agent_runs"]
            assert not status["ring"] and "dtype" in status["ring_error"]
            time.sleep(2.5)  # two more retries
            assert run.stop() == 0
        log = run.process.stderr.read()
        assert log.count("cannot open ring") == 1, log

    def test_spilled_runs_are_replayed(self, start_daemon, daemon_env):
        """No daemon while coordinators run with tiny lanes: the runs
        spill; the daemon started later stores each once and retires the
        spill files."""
        env = dict(daemon_env, LIVEMON_CAPACITY_RECORDS="64")
        env["LIVEMON_SPILL_MIN_FREE_BYTES"] = "0"
        counters = run_workers(env, 2, 400)
        assert sum(c["agent_runs_spilled"] for c in counters) > 1000
        expected = stored_runs(counters)
        assert expected == 1600
        run = start_daemon(env)
        run.wait_until(
            lambda: run.count("SELECT count(*) FROM agent_runs") == expected
        )
        spilled = run.count(
            f"SELECT count(*) FROM agent_runs WHERE lane >= {SPILL_LANE_BASE}"
        )
        assert spilled == sum(c["agent_runs_spilled"] for c in counters)
        run.wait_until(
            lambda: run.status()["agent_runs"]["spill"]["records"] == 0
        )
        assert run.stop() == 0
        assert run.count("SELECT count(*) FROM agent_runs") == expected


class TestRingsMove:
    """The agents ring replaced or regrown under running coordinators."""

    def test_restart_with_more_lanes(self, start_daemon, daemon_env):
        """A daemon restarted with 8 lanes regrows the agents ring too;
        the coordinators follow, and every run is stored once."""
        small = dict(daemon_env, LIVEMON_LANES="4")
        first = start_daemon(env=small)
        load = start_workers(small, 2, 1500, "50", "0.1")
        first.wait_until(lambda: first.count(RUNS) > 200)
        assert first.stop() == 0
        second = start_daemon(env=dict(daemon_env, LIVEMON_LANES="8"))
        spec = ipc.agents_ring(load_config(env=small))
        with ipc.attach_ring(spec) as ring:
            assert ring.lanes == 8
        counters = finish(load)
        assert all(c["agent_runs_dropped"] == 0 for c in counters)
        second.wait_until(lambda: second.count(RUNS) == 6000, timeout_s=120)
        assert second.count(DISTINCT_RUNS) == 6000
        assert second.stop() == 0

    def test_agents_ring_unlinked(self, start_daemon, daemon_env):
        """A cleanup script removes the agents ring alone: coordinators
        make a new one, the daemon follows it, and no run is lost."""
        daemon = start_daemon()
        load = start_workers(daemon_env, 2, 1500, "50", "0.1")
        daemon.wait_until(lambda: daemon.count(RUNS) > 200)
        ringbuf.unlink(daemon_env["LIVEMON_RING"] + ".agents")
        counters = finish(load)
        assert stored_runs(counters) == 6000
        daemon.wait_until(lambda: daemon.count(RUNS) == 6000, timeout_s=120)
        assert daemon.count(DISTINCT_RUNS) == 6000
        assert daemon.stop() == 0


RUNS = "SELECT count(*) FROM agent_runs"
DISTINCT_RUNS = (
    "SELECT count(*) FROM (SELECT DISTINCT pid, request_id, agent "
    "FROM agent_runs)"
)


@pytest.fixture
def rings(tmp_path, ring_name):
    """The config, events, labels and agents rings, and a store."""
    config = load_config(
        {"ring": ring_name, "db": str(tmp_path / "db.sqlite"), "lanes": 2}
    )
    opened = [
        ipc.open_ring(config, spec)
        for spec in (
            ipc.events_ring(config),
            ipc.labels_ring(config),
            ipc.agents_ring(config),
        )
    ]
    store = Store(config.db)
    yield config, *opened, store
    store.close()
    for ring in opened:
        ring.close()


def agent_runs(count: int) -> np.ndarray:
    """``count`` plausible agent runs."""
    runs = np.zeros(count, rec.AGENT_RUN_DTYPE)
    runs["timestamp_ns"] = 10**18 + np.arange(count)
    runs["request_id"] = np.arange(1, count + 1)
    runs["agent"] = rec.label_id("coder")
    runs["outcome"] = 0
    runs["success"] = 1
    runs["execution_time_ms"] = 5.0
    return runs


class TestDrainer:
    """The drainer's agents part, on real rings and a real file."""

    def test_replayed_batch_adds_nothing(self, rings):
        """A batch stored but not advanced (a crash) is stored once."""
        config, events, labels, agents, store = rings
        writer = agents.writer()
        writer.put_many(agent_runs(10))
        drainer = Drainer(config, events, labels, lambda: store, agents=agents)
        batch = agents.pending(writer.lane)
        drainer._write_agents(store, [batch])  # stored, tail not advanced
        assert drainer.drain_once() == 10
        assert drainer.drain_once() == 0
        rows = store.db.execute("SELECT count(*), min(seq) FROM agent_runs")
        assert rows.fetchone() == (10, 0)
        assert drainer.agent_runs_drained == 10
        writer.close()

    def test_zero_records_are_quarantined(self, rings):
        """A slot no producer wrote (all zero) is set aside, the rest
        stored."""
        config, events, labels, agents, store = rings
        runs = agent_runs(5)
        runs[2] = np.zeros(1, rec.AGENT_RUN_DTYPE)
        writer = agents.writer()
        writer.put_many(runs)
        drainer = Drainer(config, events, labels, lambda: store, agents=agents)
        assert drainer.drain_once() == 4
        seqs = [r[0] for r in store.db.execute("SELECT seq FROM agent_runs")]
        assert seqs == [0, 1, 3, 4]
        assert drainer.quarantine.records == 1
        writer.close()


def spilled(tmp_path, ring_name, count):
    """``count`` agent runs in a spill lane (epoch 7, lane 1); return the
    spill root and a store on a fresh database."""
    from livemon.spill import LaneSpill

    config = load_config({"ring": ring_name, "db": str(tmp_path / "db")})
    root = str(tmp_path / "spill")
    spill = LaneSpill.open(
        root,
        ring_name + ".agents",
        7,
        1,
        rec.AGENT_RUN_DTYPE,
        min_free_bytes=0,
    )
    for record in agent_runs(count):
        spill.put(record.tobytes())
    spill.close()
    return root, Store(config.db)


def test_spill_replayer_stores_once(tmp_path, ring_name):
    """Spilled runs are committed once, even when replayed again."""
    root, store = spilled(tmp_path, ring_name, 20)
    try:
        replayer = AgentSpillReplayer(root, ring_name, lambda: store)
        assert replayer.step(8) == 8
        assert replayer.step(100) == 12
        assert replayer.step(100) == 0
        rows = store.db.execute(
            "SELECT count(*), count(DISTINCT seq), min(lane) FROM agent_runs"
        ).fetchone()
        assert rows == (20, 20, SPILL_LANE_BASE + 1)
        assert replayer.backlog()["records"] == 0
    finally:
        store.close()


def test_spill_replay_failure_is_logged_once(tmp_path, ring_name, caplog):
    """A store that keeps failing (here: a closed one) is retried at every
    step and logged once, the runs kept in their files."""
    root, store = spilled(tmp_path, ring_name, 5)
    store.close()  # every query now raises sqlite3.ProgrammingError
    replayer = AgentSpillReplayer(root, ring_name, lambda: store)
    with caplog.at_level(logging.WARNING, "livemon.daemon"):
        for _ in range(5):
            assert replayer.step(100) == 0
    said = [r for r in caplog.records if "spill replay failed" in r.message]
    assert len(said) == 1
    assert replayer.last_error is not None
    assert replayer.backlog()["records"] == 5


valid_runs = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["coder", "reviewer", "é agent"]),
            "execution_time_ms": st.none() | st.floats(0, 1e6),
            "success": st.none() | st.booleans(),
            "error": st.none() | st.text(min_size=1, max_size=30),
            "input_tokens": st.none() | st.integers(0, 2**40),
            "output_tokens": st.none() | st.integers(0, 2**40),
            "quality_score": st.none() | st.floats(0, 1),
            "outcome": st.sampled_from(
                [None, "selected", "merged", "discarded", "cancelled"]
            ),
        }
    ),
    min_size=1,
    max_size=rec.MAX_AGENT_RUNS,
)


@settings(
    max_examples=30,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(runs=valid_runs)
def test_round_trip(tmp_path, ring_name, runs):
    """log_agent -> ring -> drain -> agent_runs_view gives back each
    run's values, in order, linked to its request."""
    config = load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / f"{uuid.uuid4()}.db"),
            "lanes": 2,
        }
    )
    with Monitor(config=config) as monitor:
        with monitor.request("q", category="code") as ctx:
            for run in runs:
                ctx.log_agent(
                    run["name"],
                    **{k: v for k, v in run.items() if k != "name"},
                )
        request_id = ctx.request_id
        assert monitor.counters.invalid == 0
        events, labels, agents = (
            ipc.attach_ring(spec)
            for spec in (
                ipc.events_ring(config),
                ipc.labels_ring(config),
                ipc.agents_ring(config),
            )
        )
        store = Store(config.db)
        try:
            drainer = Drainer(
                config, events, labels, lambda: store, agents=agents
            )
            while drainer.drain_once():
                pass
            rows = store.db.execute(
                "SELECT v.agent, v.execution_time_ms, v.success, v.error, "
                "v.input_tokens, v.output_tokens, v.quality_score, "
                "v.outcome, v.request_id, v.query_category FROM "
                "agent_runs_view AS v JOIN agent_runs AS a ON a.id = v.id "
                f"WHERE a.request_id = {request_id} ORDER BY a.seq"
            ).fetchall()
        finally:
            store.close()
            for ring in (events, labels, agents):
                ring.close()
    expected = [
        (
            run["name"],
            run["execution_time_ms"],
            None if run["success"] is None else int(run["success"]),
            run["error"],
            run["input_tokens"],
            run["output_tokens"],
            run["quality_score"],
            run["outcome"],
            request_id,
            "code",
        )
        for run in runs
    ]
    assert rows == expected
    unlink_rings(ring_name)  # the next example's are new
