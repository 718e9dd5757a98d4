"""
Three daemons as three hosts ship into one real ClickHouse server while
it is paused (SIGSTOP) and killed mid-run: afterwards every host's
events and agent runs in ClickHouse equal what its coordinators
recorded, exactly.
"""

from __future__ import annotations

import time

import pytest

from daemon.status import sink_trouble
from livemon.views.top import sink_lines
from tests.conftest import unlink_rings
from tests.daemon.conftest import coordinators
from tests.daemon.sinks.test_clickhouse import final_counts, wait_for
from tests.daemon.test_agent_runs import finish, start_workers, stored_runs

pytestmark = pytest.mark.clickhouse
HOSTS = 3
REQUESTS = 1500  # per coordinator and wave
AGENT_REQUESTS = 300  # per agent-run coordinator and wave: 2 runs each


@pytest.fixture
def hosts(daemon_env, tmp_path, start_daemon, clickhouse):
    """Three daemons, each its own ring, database and host name, all
    shipping to ``clickhouse``; their rings are removed after."""
    runs = []
    for i in range(HOSTS):
        env = dict(daemon_env)
        state = tmp_path / f"host-{i}"
        env.update(
            LIVEMON_RING=f"{daemon_env['LIVEMON_RING']}-{i}",
            LIVEMON_DB=str(state / "unified_monitoring.db"),
            LIVEMON_PIDFILE=str(state / "daemon.pid"),
            LIVEMON_HOST=f"host-{i}",
            LIVEMON_CLICKHOUSE_URL=clickhouse.url(),
        )
        runs.append(start_daemon(env))
    yield runs
    for run in runs:
        run.stop()
        unlink_rings(run.env["LIVEMON_RING"])


def sink(run) -> dict:
    """The daemon's published figures of its ClickHouse sink."""
    found = run.status().get("sinks") or [{}]
    return found[0]


def shipped_in_clickhouse(server) -> dict:
    """host -> events counted once (0 while the server is down)."""
    try:
        return {h: n for h, (n, _) in final_counts(server).items()}
    except Exception:
        return {}


def wave(runs) -> list:
    """Per host: a coordinator of REQUESTS requests, and one of
    AGENT_REQUESTS requests with two agent runs each."""
    return [
        (
            coordinators(run.env, 1, REQUESTS),
            start_workers(run.env, 1, AGENT_REQUESTS),
        )
        for run in runs
    ]


def tally(writers) -> tuple[int, int]:
    """(events, agent runs) one host's coordinators of a wave stored (the
    demo coordinators log each agent's run too)."""
    plain, with_runs = writers
    counters = finish(plain) + finish(with_runs)
    runs = stored_runs(counters)
    events = sum(c["recorded"] + c.get("spilled", 0) for c in counters)
    return events, runs


def test_totals_reconcile_per_host_through_pause_and_kill(hosts, clickhouse):
    """Paused, then killed and restarted: nothing lost, nothing twice."""
    totals = [[0, 0] for _ in range(HOSTS)]  # events, agent runs
    first = wave(hosts)
    wait_for(lambda: len(shipped_in_clickhouse(clickhouse)) == HOSTS)
    clickhouse.pause()  # mid-run: inserts hang, connections stay open
    second = wave(hosts)
    add(totals, first)
    time.sleep(1.0)
    clickhouse.resume()
    clickhouse.kill()  # mid-run again: a crash, no goodbye
    third = wave(hosts)
    for run in hosts:
        wait_for(lambda run=run: sink(run).get("failures", 0) >= 1)
        assert sink(run)["last_error"].startswith("ClickHouse")
        assert "FAILING" in sink_trouble(run.status()["sinks"])
        assert "FAILING" in sink_lines(run.status())[0]  # livemon top
    add(totals, second)
    add(totals, third)
    for i, run in enumerate(hosts):  # SQLite kept draining meanwhile
        wait_for(lambda i=i, run=run: run.count() == totals[i][0])
        wait_for(
            lambda i=i, run=run: (
                run.count("SELECT count(*) FROM agent_runs") == totals[i][1]
            )
        )
        # Its lag shows while ClickHouse is gone (measured each second).
        wait_for(lambda run=run: sink(run)["lag_rows"] > 0)
    clickhouse.start()
    expected = {f"host-{i}": totals[i][0] for i in range(HOSTS)}
    wait_for(lambda: shipped_in_clickhouse(clickhouse) == expected, 120)
    runs = {f"host-{i}": totals[i][1] for i in range(HOSTS)}
    wait_for(lambda: agent_runs_in(clickhouse) == runs, 120)
    for run in hosts:
        wait_for(lambda run=run: sink(run)["lag_rows"] == 0)
        assert sink(run)["failures"] == 0
    assert final_counts(clickhouse) == {
        host: (n, n) for host, n in expected.items()
    }
    assert final_counts(clickhouse, table="agent_runs") == {
        host: (n, n) for host, n in runs.items()
    }
    assert all(n > 0 for n in runs.values())


def add(totals, writers_per_host) -> None:
    """Add each host's wave to its totals."""
    for i, writers in enumerate(writers_per_host):
        events, runs = tally(writers)
        totals[i][0] += events
        totals[i][1] += runs


def agent_runs_in(server) -> dict:
    """host -> agent runs counted once (empty while the server is down)."""
    try:
        counts = final_counts(server, table="agent_runs")
    except Exception:
        return {}
    return {host: n for host, (n, _) in counts.items()}
