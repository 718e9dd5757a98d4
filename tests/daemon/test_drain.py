"""
``Drainer`` in this process, on real rings, with stores that fail in ways
a real one rarely does: the loop's boundary never lets anything out.
"""

from __future__ import annotations

import time

import pytest

from daemon.drain import Drainer
from daemon.isolation import MAX_ISOLATED_PER_STEP
from daemon.store import Store
from livemon import ipc
from livemon.config import load_config
from tests.daemon import harness


class FailingStore:
    """A store whose write raises ``error`` for records it dislikes."""

    def __init__(self, bad=lambda records: True, error=RuntimeError):
        self.bad, self.error, self.stored = bad, error, []

    def write(self, epoch, labels, events, feedback=(0, [])):
        for batch in events:
            if self.bad(batch.records):
                raise self.error("this store has a bug")
        self.stored += [r for b in events for r in b.records["request_id"]]
        return sum(len(b.records) for b in events)

    def close(self):
        pass


@pytest.fixture
def rings(ring_name, tmp_path):
    """Events and labels rings of a small configuration, and that config."""
    config = load_config(
        {"ring": ring_name, "db": str(tmp_path / "u.db"), "lanes": 2},
        env={},
    )
    events, labels = ipc.open_rings(config)
    yield config, events, labels
    events.close()
    labels.close()


def fill(events, count):
    """Put ``count`` records in a lane of ``events``; return the lane."""
    writer = events.writer()
    writer.put_many(harness.events(count))
    lane = next(i for i in range(events.lanes) if events.lane_state(i).head)
    writer.close()
    return lane


class TestBoundary:
    def test_a_store_that_always_fails_keeps_everything_in_the_ring(
        self, rings
    ):
        """Every record failing is the store's fault: the step fails,
        counted, nothing is advanced and little is set aside."""
        config, events, labels = rings
        lane = fill(events, 40)
        drainer = Drainer(config, events, labels, FailingStore)
        assert drainer.step() == 0
        assert drainer.failures == 1
        assert "SystemicFault" in drainer.last_error
        assert drainer.quarantine.records == MAX_ISOLATED_PER_STEP
        assert events.lane_state(lane).tail == 0
        assert drainer.step() == 0  # backing off: no second attempt yet
        assert drainer.failures == 1

    def test_one_bad_record_is_set_aside_and_the_rest_stored(self, rings):
        """Halving finds the one record the store refuses."""
        config, events, labels = rings
        lane = fill(events, 100)
        target = int(events.pending(lane).records["request_id"][37])
        store = FailingStore(
            bad=lambda r: target in r["request_id"], error=ValueError
        )
        drainer = Drainer(config, events, labels, lambda: store)
        assert drainer.step() == 100
        assert drainer.quarantine.records == 1
        assert len(store.stored) == 99 and target not in store.stored
        assert events.lane_state(lane).tail == 100
        assert drainer.failures == 0 and drainer.last_error is None


class TestTooLittleRoom:
    def test_the_store_stays_open_and_the_drain_resumes(self, rings):
        """DatabaseFull backs off with the store kept open (reopening it
        cannot make room), the records wait, and they go in once there is
        room."""
        config, events, labels = rings
        lane = fill(events, 25)
        opened: list[Store] = []

        def open_store() -> Store:
            opened.append(Store(config.db, min_free_bytes=2**62))
            return opened[-1]

        drainer = Drainer(config, events, labels, open_store)
        try:
            assert drainer.step() == 0
            assert "DatabaseFull" in (drainer.last_error or "")
            assert drainer.store is opened[0]
            assert events.lane_state(lane).tail == 0
            opened[0].min_free_bytes = 0  # space came back
            deadline = time.monotonic() + 10
            while drainer.step() == 0:
                assert time.monotonic() < deadline, drainer.last_error
                time.sleep(0.05)
            assert len(opened) == 1
            assert drainer.last_error is None
            assert events.lane_state(lane).tail == 25
        finally:
            drainer.close()
