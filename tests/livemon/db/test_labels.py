"""
A label id whose text has not reached the database reads as unknown in
``monitoring_events``, never as NULL ("no error") or ``[]`` ("no agent");
a text that arrives later is filled into the lists stored without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from livemon.db import schema
from livemon.db.rows import ListLabels, insert_records
from livemon.db.transaction import atomic
from livemon.db.writer import open_writer
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_id, label_record
from ringbuf import Batch

COLUMNS = "error, intent_category, actual_agents, suggested_agents"


def labels_batch(*texts: str) -> Batch:
    """A labels-ring batch announcing ``texts``."""
    raw = b"".join(label_record(t) for t in texts)
    return Batch(0, 0, np.frombuffer(raw, LABEL_DTYPE).copy())


def event(seq: int, *, error: str, agents: list[str]) -> Batch:
    """One request record whose error and agents are the given texts."""
    record = np.zeros(1, RECORD_DTYPE)
    record["error"] = label_id(error)
    record["actual_agents"][0, : len(agents)] = [label_id(a) for a in agents]
    return Batch(0, seq, record)


@pytest.fixture
def db(tmp_path):
    """A new unified database, and the list cache its writer keeps."""
    connection = open_writer(str(tmp_path / "u.db"))
    yield connection, ListLabels(connection)
    connection.close()


def write(db, labels: list[Batch], events: list[Batch]) -> None:
    """Insert as the daemon does: one transaction."""
    connection, lists = db
    with atomic(connection):
        insert_records(connection, lists, 1, labels, events)


def view(db) -> list[tuple]:
    """The seed view's text columns, oldest first."""
    return db[0].execute(f"SELECT {COLUMNS} FROM monitoring_events").fetchall()


class TestUnknownLabels:
    def test_missing_texts_read_as_unknown(self, db):
        """An error and an agent whose labels were lost are named as
        unknown; a record without them still reads NULL and []."""
        write(db, [labels_batch("coder")], [event(0, error="boom", agents=[])])
        write(db, [], [event(1, error="x", agents=["coder", "ghost"])])
        blank = np.zeros(1, RECORD_DTYPE)
        write(db, [], [Batch(0, 2, blank)])
        rows = view(db)
        boom = schema.unknown_text(label_id("boom"))
        ghost = schema.unknown_text(label_id("ghost"))
        assert rows[0] == (boom, None, "[]", "[]")
        assert rows[1][2] == f'["coder","{ghost}"]'
        assert rows[2] == (None, None, "[]", "[]")

    def test_late_text_is_filled_into_stored_lists(self, db):
        """When the lost label finally arrives, lists stored without it
        get its text, and the scalar column shows it too."""
        write(db, [], [event(0, error="late", agents=["planner", "coder"])])
        write(db, [labels_batch("coder", "late", "planner")], [])
        assert view(db) == [("late", None, '["planner","coder"]', "[]")]
