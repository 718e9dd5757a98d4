"""
Retention moves old agent runs with the events: the same cutoff, the same
monthly archives, their rollup hours rebuilt on both sides, and nothing a
destination has not shipped.
"""

from __future__ import annotations

import contextlib
import glob
import sqlite3

import numpy as np
import pytest

import ringbuf
from daemon.retention import NS_PER_DAY, Retention
from daemon.store import Store
from livemon.db import agent_rollup
from livemon.db.rows import insert_agent_runs
from livemon.record import AGENT_RUN_DTYPE, label_id

NOW = 1_790_000_000 * 10**9  # 2026-09-21
CUTOFF = NOW - 90 * NS_PER_DAY


def runs_at(times_ns, lane=2) -> ringbuf.Batch:
    """Agent runs at the given timestamps: two agents, every outcome."""
    n = len(times_ns)
    records = np.zeros(n, AGENT_RUN_DTYPE)
    records["timestamp_ns"] = times_ns
    records["request_id"] = np.arange(n)
    records["agent"] = np.where(
        np.arange(n) % 2, label_id("coder"), label_id("analyst")
    )
    records["outcome"] = np.arange(n) % 5 - 1
    records["execution_time_ms"] = np.arange(n) * 7.5
    records["success"] = np.arange(n) % 3 - 1
    records["input_tokens"] = -1
    records["output_tokens"] = np.arange(n)
    records["quality_score"] = np.nan
    return ringbuf.Batch(lane, 0, records)


@pytest.fixture
def store(tmp_path):
    """300 old agent runs over two months and 200 new ones."""
    store = Store(str(tmp_path / "unified.db"))
    old = NOW - 130 * NS_PER_DAY + np.arange(300) * (NS_PER_DAY // 10)
    new = NOW - 10 * NS_PER_DAY + np.arange(200) * 10**9
    with store.atomic() as db:
        insert_agent_runs(db, 7, [runs_at(np.concatenate([old, new]))])
    yield store
    store.close()


def identities(path, where="") -> set[tuple[int, int, int]]:
    """The (epoch, lane, seq) of every agent run in a database file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return set(
            db.execute(f"SELECT epoch, lane, seq FROM agent_runs {where}")
        )


def rollups(path) -> tuple[list, list]:
    """Both agent-run rollup tables, as stored and as recomputed from
    the agent runs the file holds now."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.create_function("log2", 1, np.log2)
        stored, fresh = [], []
        selects = (
            agent_rollup.AGENT_ROLLUP_SELECT,
            agent_rollup.AGENT_LATENCY_SELECT,
        )
        for table, select in zip(
            agent_rollup.AGENT_ROLLUP_TABLES, selects, strict=True
        ):
            stored.append(
                db.execute(
                    f"SELECT * FROM {table} ORDER BY 1, 2, 3"
                ).fetchall()
            )
            fresh.append(
                db.execute(
                    f"SELECT * FROM ({select.format(where='true')}) "
                    "ORDER BY 1, 2, 3"
                ).fetchall()
            )
        return stored, fresh


class TestAgentRunsRetention:
    def test_moves_exactly_the_old_runs(self, store, tmp_path):
        """Old runs leave for their month's archive, new ones stay, and
        every file's rollups match the runs it holds."""
        before = identities(store.path)
        old = identities(store.path, f"WHERE timestamp_ns < {CUTOFF}")
        report = Retention(store, 90, str(tmp_path / "archive")).run(NOW)
        assert report.total == len(old) == 300
        archives = sorted(glob.glob(str(tmp_path / "archive" / "events-*.db")))
        assert [a.rsplit("/", 1)[1] for a in archives] == [
            "events-2026-05.db",
            "events-2026-06.db",
        ]
        assert set().union(*(identities(a) for a in archives)) == old
        assert identities(store.path) == before - old
        for path in [store.path, *archives]:
            stored, fresh = rollups(path)
            assert stored == fresh
            assert stored[0] and stored[1]

    def test_crash_between_copy_and_delete(self, store, tmp_path):
        """Runs copied but not deleted are neither lost nor doubled."""
        retention = Retention(store, 90, str(tmp_path / "archive"))
        rows = store.db.execute(
            "SELECT id, timestamp_ns FROM agent_runs ORDER BY id LIMIT 50"
        ).fetchall()
        path = str(tmp_path / "archive" / "events-2026-05.db")
        span = (rows[0][1], rows[-1][1])
        retention._copy(path, [r[0] for r in rows], span, "agent_runs")
        retention.run(NOW)
        archives = glob.glob(str(tmp_path / "archive" / "events-*.db"))
        assert sum(len(identities(a)) for a in archives) == 300
        assert len(identities(store.path)) == 200
        for path in [store.path, *archives]:
            stored, fresh = rollups(path)
            assert stored == fresh

    def test_keeps_what_a_destination_has_not_shipped(self, store, tmp_path):
        """Old runs above the lowest agent_runs mark stay, however old;
        the events mark does not free them."""
        first = store.db.execute("SELECT min(id) FROM agent_runs").fetchone()[
            0
        ]
        store.db.executemany(
            "INSERT INTO sink_progress VALUES (?, ?, ?, 1)",
            [
                ("fast", "agent_runs", first + 80),
                ("slow", "agent_runs", first + 29),
                ("fast", "events", 10**9),
                ("slow", "events", 10**9),
            ],
        )
        moved = Retention(
            store, 90, str(tmp_path / "a"), sinks=["fast", "slow"]
        ).run(NOW)
        assert moved.total == 30
        left = store.db.execute("SELECT min(id) FROM agent_runs").fetchone()[0]
        assert left == first + 30

    def test_the_newest_run_stays(self, store, tmp_path):
        """Fully shipped, the newest run stays (its id is never reused)."""
        store.db.execute(
            f"DELETE FROM agent_runs WHERE timestamp_ns >= {CUTOFF}"
        )
        newest = store.db.execute("SELECT max(id) FROM agent_runs").fetchone()[
            0
        ]
        store.db.execute(
            "INSERT INTO sink_progress VALUES ('all', 'agent_runs', ?, 1)",
            (newest,),
        )
        Retention(store, 90, str(tmp_path / "a"), sinks=["all"]).run(NOW)
        assert store.db.execute("SELECT id FROM agent_runs").fetchall() == [
            (newest,)
        ]

    def test_a_destination_of_events_only_holds_no_run_back(
        self, store, tmp_path
    ):
        """Marks count only for the destinations taking agent runs: one
        that takes events alone (never an agent_runs mark) keeps none."""
        moved = Retention(
            store, 90, str(tmp_path / "a"), sinks={"events": ["events-only"]}
        ).run(NOW)
        assert moved.total == 300
