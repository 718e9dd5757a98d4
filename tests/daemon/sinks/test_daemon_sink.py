"""
A real daemon configured for a ClickHouse that is not there: it drains
as ever, shows the sink's lag and error, keeps the unshipped rows and
stops within its bound.  No server needed: nothing listens on the port.
"""

from __future__ import annotations

import sys
import time

import pytest

from daemon.forward import read_marks
from daemon.sinks.clickhouse import INSTALL_HINT, ClickHouseDestination
from daemon.store import Store
from tests.daemon.conftest import coordinators, recorded
from tests.daemon.sinks.clickhouse_server import free_port
from tests.daemon.sinks.test_clickhouse import wait_for


def test_an_absent_server_blocks_nothing(daemon_env, start_daemon):
    """Records land in SQLite, status tells the sink's trouble and lag,
    the stop is prompt and the mark stays at 0."""
    env = dict(
        daemon_env,
        LIVEMON_CLICKHOUSE_URL=f"clickhouse://127.0.0.1:{free_port()}/x",
        LIVEMON_HOST="lonely",
    )
    run = start_daemon(env)
    total = recorded(coordinators(env, 2, 500))
    wait_for(lambda: run.count() == total)

    def sink():
        return (run.status().get("sinks") or [{}])[0]

    def behind():
        """Each source's lag against its table's rows (the coordinators
        log agent runs too, stored after their requests)."""
        sources = sink().get("sources") or {}
        return all(
            sources.get(table, {}).get("lag_rows")
            == run.count(f"SELECT count(*) FROM {table}")
            for table in ("events", "agent_runs")
        )

    wait_for(behind)
    assert sink()["sources"]["events"]["lag_rows"] == total
    assert sink()["failures"] >= 1 and sink()["shipped_rows"] == 0
    assert "Connection refused" in sink()["last_error"]
    started = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - started < 15
    store = Store(run.db)
    try:
        assert read_marks(store.db, "clickhouse") == {
            "events": 0,
            "agent_runs": 0,
        }
    finally:
        store.close()


def test_without_the_driver_the_error_says_what_to_install(store, monkeypatch):
    """clickhouse-driver missing (simulated: its import fails): a
    permanent DestinationError naming the extra, nothing shipped."""
    from daemon.forward import DestinationError, read_rows

    monkeypatch.setitem(sys.modules, "clickhouse_driver", None)
    dest = ClickHouseDestination("clickhouse://127.0.0.1/x", "h")
    with pytest.raises(DestinationError) as caught:
        dest.ship("events", read_rows(store.db, "events", 0, 10))
    assert caught.value.permanent and str(caught.value) == INSTALL_HINT


def test_a_detached_daemon_gets_the_flag():
    """start --clickhouse-url hands the URL on to the detached child."""
    from daemon.cli import flags_for_child

    url = "clickhouse://127.0.0.1:9000/livemon"
    assert flags_for_child({"clickhouse_url": url, "ring": None}) == [
        "--clickhouse-url",
        url,
    ]
