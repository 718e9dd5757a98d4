"""
Destinations for the forwarder's tests, and a store holding events.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ringbuf
from daemon.forward import DestinationError, Rows
from daemon.store import Store
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_id, label_record


class Recording:
    """A destination that keeps what it was handed, and fails on demand.

    Not a stand-in for a real server: it is the far end the forwarder
    talks to in these tests, which test the forwarder.
    """

    sources = ("events",)

    def __init__(self, name="recording", sources=("events",)):
        self.name = name
        self.sources = sources
        self.shipped: dict[str, list[Rows]] = {s: [] for s in sources}
        self.attempts = 0
        self.fail_next = 0  # this many calls raise
        self.error: Exception = DestinationError("refused for the test")
        self.block = threading.Event()  # set: ship waits until cleared
        self.closed = False

    def ship(self, source: str, rows: Rows) -> None:
        self.attempts += 1
        while self.block.is_set():
            time.sleep(0.01)
        if self.fail_next:
            self.fail_next -= 1
            raise self.error
        self.shipped[source].append(rows)

    def close(self) -> None:
        self.closed = True

    def ids(self, source="events") -> list[int]:
        """Every id shipped, in order."""
        return [i for rows in self.shipped[source] for i in rows.columns["id"]]


def event_batch(count: int, lane: int = 0, first_seq: int = 0):
    """``count`` records with an agent list and a category, stamped now."""
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = time.time_ns() + np.arange(count)
    records["request_id"] = np.arange(first_seq, first_seq + count) + 7
    records["query_category"] = label_id("coding")
    records["actual_agents"][:, 0] = label_id("coder")
    records["success"] = 1
    records["execution_time_ms"] = np.nan
    records["token_count"] = -1
    return ringbuf.Batch(lane, first_seq, records)


def label_batch(*texts: str) -> ringbuf.Batch:
    """Label records for ``texts``."""
    raw = b"".join(label_record(t) for t in texts)
    return ringbuf.Batch(0, 0, np.frombuffer(raw, LABEL_DTYPE).copy())


@pytest.fixture
def store(tmp_path):
    """A store with 250 events (labels known), closed after the test."""
    store = Store(str(tmp_path / "unified.db"))
    store.write(1, [label_batch("coding", "coder")], [event_batch(250)])
    yield store
    store.close()
