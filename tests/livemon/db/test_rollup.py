"""
Hourly rollups: kept by numpy on insert, equal to SQL aggregation of the
events, exactly once under replays, built for events stored before them.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemon.db import rollup, schema
from livemon.db.rows import (
    INSERT_EVENTS,
    INSERT_LABELS,
    REPLACE_LABELS,
    ListLabels,
    event_rows,
    insert_events,
    insert_labels,
    insert_records,
    list_columns,
)
from livemon.record import label_id
from ringbuf import Batch
from tests.livemon.helpers import AGENTS, synthetic_records

HOUR_NS = rollup.NS_PER_HOUR
START_NS = 1_790_000_000 * 10**9


@pytest.fixture
def db():
    """A migrated in-memory unified database."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    schema.apply_migrations(connection)
    yield connection
    connection.close()


def stored(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every rollup table's rows, in key order."""
    return {
        table: db.execute(
            f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4"
        ).fetchall()
        for table in rollup.ROLLUP_TABLES
    }


def recomputed(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """The rollups computed afresh by SQL from every stored event."""
    selects = (rollup.ROLLUP_SELECT, rollup.LATENCY_SELECT)
    selects += (rollup.REASONS_SELECT,)
    return {
        table: db.execute(
            f"SELECT * FROM ({select.format(where='1')}) ORDER BY 1, 2, 3, 4"
        ).fetchall()
        for table, select in zip(rollup.ROLLUP_TABLES, selects, strict=True)
    }


def assert_same(got: dict, expected: dict) -> None:
    for table, rows in expected.items():
        assert len(got[table]) == len(rows), table
        for mine, theirs in zip(got[table], rows, strict=True):
            assert mine == pytest.approx(theirs, rel=1e-9), table


def insert(db, records, labels, first_seq=0, lane=0):
    """Insert ``records`` as one batch, the way the daemon does."""
    lists = ListLabels(db)
    db.execute("BEGIN")
    insert_labels(db, lists, list(labels.items()))
    added = insert_events(db, lists, 1, Batch(lane, first_seq, records))
    db.execute("COMMIT")
    return added


class TestRollups:
    def test_numpy_rollups_equal_sql_aggregation(self, db):
        """Batches spanning hour boundaries roll up as SQL would count."""
        records, labels = synthetic_records(6000, 1, START_NS, 2 * 10**9)
        for part in range(3):
            chunk = records[part * 2000 : (part + 1) * 2000]
            assert insert(db, chunk, labels, part * 2000) == 2000
        got = stored(db)
        assert sum(row[3] for row in got["rollup"]) > 0
        assert len({row[0] for row in got["rollup"]}) == 4  # hours
        assert_same(got, recomputed(db))

    def test_a_replayed_batch_counts_each_event_once(self, db):
        """A batch stored again with new records after it (a replay after
        a crash between commit and advance) adds only the new ones."""
        records, labels = synthetic_records(3000, 2, START_NS, 10**9)
        insert(db, records[:2000], labels)
        assert insert(db, records, labels) == 1000
        got = stored(db)
        every = [row for row in got["rollup"] if row[1] == 0]
        assert sum(row[3] for row in every) == sum(
            np.isin(records["event_type"], (0, 1))
        )
        assert_same(got, recomputed(db))

    def test_lanes_rolled_up_together_with_a_replayed_one(self, db):
        """The daemon's path: several lanes in one pass, one of them a
        replay of rows already stored."""
        records, labels = synthetic_records(3000, 6, START_NS, 10**9)
        lists = ListLabels(db)
        lanes = [
            Batch(n, 0, records[n * 1000 : (n + 1) * 1000]) for n in range(3)
        ]
        db.execute("BEGIN")
        insert_labels(db, lists, list(labels.items()))
        assert insert_records(db, lists, 1, [], lanes[:2]) == 2000
        assert insert_records(db, lists, 1, [], [lanes[0], lanes[2]]) == 1000
        db.execute("COMMIT")
        assert_same(stored(db), recomputed(db))
        every = [row for row in stored(db)["rollup"] if row[1] == 0]
        assert sum(row[3] for row in every) == sum(
            np.isin(records["event_type"], (0, 1))
        )

    def test_migration_rolls_up_events_stored_before_it(self, db, monkeypatch):
        """A database from before the rollups gets them for its events,
        per agent too: list members are found from the list labels."""
        with contextlib.closing(
            sqlite3.connect(":memory:", isolation_level=None)
        ) as old:
            monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
            schema.apply_migrations(old)
            records, labels = synthetic_records(2000, 3, START_NS, 10**9)
            lists = ListLabels(old)
            old.executemany(INSERT_LABELS, list(labels.items()))  # 0001
            lists.learn(labels.items())
            ids = list_columns(records, lists)
            old.executemany(
                INSERT_EVENTS, event_rows(1, Batch(0, 0, records), ids)
            )
            old.executemany(REPLACE_LABELS, lists.new)  # as 0003 stored lists
            monkeypatch.undo()
            assert schema.apply_migrations(old)[0] == "0004_hourly_rollups"
            got = stored(old)
            agents = {row[1] for row in got["rollup"]} - {rollup.EVERY_REQUEST}
            assert agents == {label_id(a) for a in AGENTS}
            assert_same(got, recomputed(old))
        # The same events inserted the usual way give the same rollups.
        insert(db, records, labels)
        assert_same(stored(db), got)

    def test_whole_milliseconds_bucket_alike_in_numpy_and_sql(self, db):
        """Whole milliseconds sit on bucket edges (1 + 7 ms is 2**3), and
        SQLite's log2 and numpy's may differ in the last bit."""
        records, labels = synthetic_records(20_000, 5, START_NS, 10**6)
        records["execution_time_ms"] = np.arange(len(records)) % 5000
        insert(db, records, labels)
        got, expected = stored(db), recomputed(db)
        assert got["rollup_latency"] == expected["rollup_latency"]

    def test_stand_in_log2_agrees_with_sqlite(self):
        """Where SQLite lacks math functions, ours stands in."""
        with contextlib.closing(sqlite3.connect(":memory:")) as db:
            values = [0.0, -1.0, 0.5, 1.0, 3.0, 1023.0, 1e12, None]
            builtin = [
                db.execute("SELECT log2(?)", (v,)).fetchone()[0]
                for v in values
            ]
            assert [rollup._log2(v) for v in values] == pytest.approx(builtin)


class TestPercentiles:
    def test_within_the_bucket_resolution_of_exact(self):
        """p50 and p95 read from buckets are within 2% of numpy's."""
        rng = np.random.default_rng(4)
        latency = rng.lognormal(6.5, 1.0, 50_000)
        scaled = rollup.BUCKETS_PER_DOUBLING * np.log2(1 + latency)
        buckets, counts = np.unique(
            scaled.astype(np.int64), return_counts=True
        )
        p50, p95 = rollup.percentiles(buckets, counts)
        exact50, exact95 = np.percentile(latency, [50, 95])
        assert p50 == pytest.approx(exact50, rel=0.02)
        assert p95 == pytest.approx(exact95, rel=0.02)

    def test_empty_histogram_is_unknown(self):
        """No timed requests: NaN, not zero."""
        empty = np.empty(0, np.int64)
        assert all(math.isnan(p) for p in rollup.percentiles(empty, empty))


class TestGroupRows:
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 3),
                st.sampled_from([0, -(2**62), 5, 2**62]),
                st.integers(-(2**40), 2**40),
            ),
            min_size=1,
            max_size=60,
        )
    )
    def test_groups_in_key_order_each_with_its_keys(self, rows):
        """Rows of equal keys share a group, groups come in the keys'
        order, and the row given for a group has that group's keys
        (small-range and label-id keys alike)."""
        keys = [np.array(c, np.int64) for c in zip(*rows, strict=True)]
        one, group = rollup.group_rows(*keys)
        distinct = sorted(set(rows))
        assert [distinct[g] for g in group.tolist()] == rows
        assert [tuple(int(k[i]) for k in keys) for i in one] == distinct

    @pytest.mark.parametrize(
        "distinct",
        [
            pytest.param(12, id="few codes: marked, not sorted"),
            pytest.param(3000, id="codes past 4 a row: sorted"),
        ],
    )
    def test_large_batches_group_as_sorting_would(self, distinct):
        """Label-id keys with values the sample misses (one row each, off
        the sampling stride) and, with many distinct values, more codes
        than rows: both ways of grouping agree with ``np.unique``."""
        rng = np.random.default_rng(distinct)
        rows = 20_000
        hours = rng.integers(490_000, 490_002, rows)
        labels = [
            rng.integers(-(2**62), 2**62, distinct)[
                rng.integers(0, distinct, rows)
            ]
            for _ in range(2)
        ]
        for key in labels:
            key[rng.integers(0, rows, 5) | 1] = rng.integers(1, 2**62, 5)
        one, group = rollup.group_rows(hours, *labels)
        keys = np.stack([hours, *labels], axis=1)
        distinct_keys, inverse = np.unique(keys, axis=0, return_inverse=True)
        assert (keys[one] == distinct_keys).all()
        assert (group == inverse.reshape(-1)).all()
