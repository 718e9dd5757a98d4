"""
The seed's per-agent performance log becomes agent runs: one per migrated
row, with the row's identity, linked to the execution event of the same
row, in the agent rollups, exactly once on a rerun (also into a database
migrated before runs were made), and reconciled.
"""

from __future__ import annotations

import contextlib
import sqlite3

import numpy as np
import pytest

from livemon.db import agent_rollup
from livemon.migrate import bulk
from livemon.migrate.migrator import migrate
from tests.livemon.migrate import legacy_fixtures as fx


@pytest.fixture
def legacy(tmp_path):
    """An agent_performance.db of 300 good and 3 bad rows."""
    path = tmp_path / "agent_performance.db"
    good, bad = fx.performance_db(path)
    return str(path), good, bad


@pytest.fixture
def unified(tmp_path):
    """Where the unified database goes."""
    return str(tmp_path / "state" / "unified_monitoring.db")


def rows(path, sql):
    """Rows of ``sql`` on a database file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.create_function("log2", 1, np.log2)
        return db.execute(sql).fetchall()


def source_rows(legacy_path):
    """(agent, execution ms, success, error) of the legacy rows kept."""
    return sorted(
        rows(
            legacy_path,
            "SELECT agent_name, execution_time_ms, success, error "
            "FROM agent_performance WHERE rowid <= 300",
        ),
        key=repr,
    )


def assert_rollups_fresh(unified):
    """The agent rollups equal a fresh aggregate of the runs stored."""
    for table, select in zip(
        agent_rollup.AGENT_ROLLUP_TABLES,
        (
            agent_rollup.AGENT_ROLLUP_SELECT,
            agent_rollup.AGENT_LATENCY_SELECT,
        ),
        strict=True,
    ):
        stored = rows(unified, f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        fresh = rows(
            unified,
            f"SELECT * FROM ({select.format(where='true')}) ORDER BY 1, 2, 3",
        )
        assert stored == fresh and stored


class TestAgentRuns:
    def test_each_row_is_one_run_linked_to_its_event(self, legacy, unified):
        """Every good row: one run, the same agent, time, success and
        error as the legacy row, the identity and request of its event."""
        path, good, _ = legacy
        (report,) = migrate(unified, [path])
        assert report.reconciled, report.checks
        assert report.runs_added == good
        view = rows(
            unified,
            "SELECT agent, execution_time_ms, success, error "
            "FROM agent_runs_view",
        )
        assert sorted(view, key=repr) == source_rows(path)
        linked = rows(
            unified,
            "SELECT count(*) FROM agent_runs AS a JOIN events AS e "
            "USING (epoch, lane, seq) WHERE e.request_id = a.request_id "
            "AND e.event_type = 2 AND e.timestamp_ns = a.timestamp_ns",
        )
        assert linked == [(good,)]
        names = {c.name for c in report.checks}
        assert {"agent runs", "agent runs sum execution_time_ms"} <= names

    def test_rollups_hold_the_runs(self, legacy, unified):
        """The agent rollups equal a fresh aggregate of the runs."""
        migrate(unified, [legacy[0]])
        assert_rollups_fresh(unified)

    def test_rerun_adds_no_run(self, legacy, unified):
        """A second run (of a moved copy too) adds no run twice."""
        migrate(unified, [legacy[0]])
        (again,) = migrate(unified, [legacy[0]])
        assert again.added == again.runs_added == 0 and again.reconciled
        assert rows(unified, "SELECT count(*) FROM agent_runs") == [
            (legacy[1],)
        ]

    def test_a_database_migrated_before_runs_gets_them_once(
        self, legacy, unified
    ):
        """Migrated by the release before agent runs (events only): the
        rerun adds each run once, and the rollups follow."""
        migrate(unified, [legacy[0]])
        with contextlib.closing(
            sqlite3.connect(unified, isolation_level=None)
        ) as db:
            for table in ("agent_runs", *agent_rollup.AGENT_ROLLUP_TABLES):
                db.execute(f"DELETE FROM {table}")
        (again,) = migrate(unified, [legacy[0]])
        assert again.added == 0 and again.runs_added == legacy[1]
        assert again.reconciled
        (runs,) = rows(unified, "SELECT sum(runs) FROM rollup_agent_runs")
        assert runs == (legacy[1],)

    def test_some_runs_there_already(self, legacy, unified):
        """Half the runs stored (an interrupted run's, say): the rerun
        adds the other half, and folds only those into the rollups."""
        migrate(unified, [legacy[0]])
        with contextlib.closing(
            sqlite3.connect(unified, isolation_level=None)
        ) as db:
            db.execute("DELETE FROM agent_runs WHERE seq % 2 = 0")
            for table in agent_rollup.AGENT_ROLLUP_TABLES:
                db.execute(f"DELETE FROM {table}")
            agent_rollup.add_agent_runs_after(db, 0)
        (again,) = migrate(unified, [legacy[0]])
        assert again.reconciled and 0 < again.runs_added < legacy[1]
        assert_rollups_fresh(unified)

    def test_a_big_migration_builds_the_run_indexes_again(
        self, legacy, unified, monkeypatch
    ):
        """Set aside for a big load, the agent_runs indexes come back."""
        monkeypatch.setattr(bulk, "DEFER_MIN_ROWS", 10)
        migrate(unified, [legacy[0]])
        names = {
            name
            for (name,) in rows(
                unified,
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'agent_runs'",
            )
        }
        assert {"idx_agent_runs_request", "idx_agent_runs_timestamp"} <= names

    def test_other_layouts_make_no_runs(self, tmp_path, unified):
        """Routing and quality rows are per request: no agent runs."""
        fx.routing_db(tmp_path / "routing_decisions.db")
        fx.quality_db(tmp_path / "quality_metrics.db")
        reports = migrate(
            unified,
            [
                str(tmp_path / "routing_decisions.db"),
                str(tmp_path / "quality_metrics.db"),
            ],
        )
        assert all(r.reconciled and r.runs_added == 0 for r in reports)
        assert rows(unified, "SELECT count(*) FROM agent_runs") == [(0,)]
