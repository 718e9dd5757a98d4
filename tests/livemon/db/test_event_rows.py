"""
Records to ``events`` rows: a column holding one value throughout is
passed as one repeated object, and what is stored is what was recorded,
bit for bit (unknown NaN equal to itself, -0.0 apart from 0.0).
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from livemon.db import schema
from livemon.db.rows import ListLabels, event_rows, insert_events
from livemon.record import RECORD_DTYPE
from ringbuf import Batch


@pytest.fixture
def db():
    """A migrated in-memory unified database, autocommit."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    schema.apply_migrations(connection)
    yield connection
    connection.close()


def records(count: int) -> np.ndarray:
    """Records whose pid is constant, whose score is never given, and
    whose execution times vary."""
    out = np.zeros(count, RECORD_DTYPE)
    out["timestamp_ns"] = 1_790_000_000 * 10**9 + np.arange(count)
    out["pid"] = 4242
    out["quality_score"] = np.nan
    out["execution_time_ms"] = np.arange(count) * 1.5
    return out


class TestEventRows:
    def test_constant_columns_give_the_values_tolist_gives(self):
        """Row by row, the same Python values as converting each column
        with ``tolist``: constant ints, NaN floats and varying ones."""
        batch = Batch(3, 100, records(50))
        ids = {
            name: np.zeros(50, np.int64)
            for name in ("intent_domains", "suggested_agents", "actual_agents")
        }
        rows = list(event_rows(7, batch, ids))
        names = RECORD_DTYPE.names
        for i, row in enumerate(rows):
            assert row[:3] == (7, 3, 100 + i)
            assert row[3 + names.index("pid")] == 4242
            assert math.isnan(row[3 + names.index("quality_score")])
            assert row[3 + names.index("execution_time_ms")] == i * 1.5

    def test_negative_zero_is_not_folded_into_zero(self):
        """A column of 0.0 with one -0.0 is not "one value throughout":
        the row holds the -0.0 as recorded (SQLite decides what to keep)."""
        recs = records(4)
        recs["context_size_kb"] = [0.0, 0.0, -0.0, 0.0]
        ids = {
            name: np.zeros(4, np.int64)
            for name in ("intent_domains", "suggested_agents", "actual_agents")
        }
        column = 3 + RECORD_DTYPE.names.index("context_size_kb")
        rows = event_rows(1, Batch(0, 0, recs), ids)
        signs = [math.copysign(1.0, row[column]) for row in rows]
        assert signs == [1.0, 1.0, -1.0, 1.0]

    def test_stored_values_round_trip(self, db):
        """Constant pid, unknown score (NULL), varying times: stored as
        given."""
        insert_events(db, ListLabels(db), 1, Batch(0, 0, records(20)))
        got = db.execute(
            "SELECT pid, quality_score, execution_time_ms FROM events "
            "ORDER BY id"
        ).fetchall()
        assert got == [(4242, None, i * 1.5) for i in range(20)]
