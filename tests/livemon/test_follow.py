"""
A ring replaced under running coordinators: unlinked by a cleanup script
(or ``RemoveIPC=yes``), recreated by someone else, or retired by its owner.
Producers notice without a syscall per record, move to the segment now
under the name, and what nobody would drain moves with them.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

import ringbuf
from livemon import FeedbackLoop, Monitor, ipc
from livemon.config import load_config
from livemon.record import label_id
from ringbuf import writer as writer_module
from tests.livemon.helpers import events_in, labels_in

REQUESTS = 300


@pytest.fixture
def quick_stale(monkeypatch):
    """Writers look at their segment's name on every due put."""
    monkeypatch.setattr(writer_module, "STALE_CHECK_S", 0.0)


def record(monitor: Monitor, n: int, agent: str = "coder") -> None:
    """``n`` requests whose agent is ``agent``."""
    for i in range(n):
        with monitor.request(f"q{i}") as ctx:
            ctx.log_execution(actual_agents=[agent], success=True)


def unlink_all(name: str) -> None:
    """What a cleanup script does: remove every segment of the ring."""
    for suffix in ("", ".labels", ".feedback"):
        ringbuf.unlink(name + suffix)


class TestUnlinked:
    def test_records_move_to_the_new_segment(self, ring_name, quick_stale):
        """Unlinked with nobody draining it: every record, old and new,
        ends up in the ring now under the name, labels included."""
        with Monitor(ring_name) as monitor:
            record(monitor, REQUESTS)
            unlink_all(ring_name)
            record(monitor, REQUESTS, agent="reviewer")
            assert monitor.counters.recorded == 2 * REQUESTS
            assert monitor.counters.dropped == 0
            events = events_in(ring_name)
            labels = labels_in(ring_name)
        assert len(events) == 2 * REQUESTS
        agents = events["actual_agents"][:, 0]
        expected = {label_id("coder"), label_id("reviewer")}
        assert set(agents.tolist()) == expected
        assert {"coder", "reviewer"} <= set(labels.values())

    def test_a_drained_segment_is_not_carried(self, ring_name, quick_stale):
        """With a consumer still attached to the old segment (the daemon
        drains it to the end), nothing is copied twice: each record is in
        exactly one segment (a few may reach the old one before the writer
        looks at the name again)."""
        with Monitor(ring_name) as monitor:
            record(monitor, 10)
            consumer = ipc.attach_ring(ipc.events_ring(monitor.config))
            try:
                assert consumer.lock_consumer()
                unlink_all(ring_name)
                record(monitor, 20)
                old = sum(
                    len(consumer.pending(n).records)
                    for n in range(consumer.lanes)
                )
            finally:
                consumer.close()
            new = len(events_in(ring_name))
        assert old >= 10 and new > 0
        assert old + new == 30


class TestRetired:
    def test_owner_replaces_a_ring_with_more_lanes(self, ring_name):
        """The daemon's way to grow a ring: a new segment under the name,
        the old one retired; writers move at their next record."""
        small = load_config({"ring": ring_name, "lanes": 2})
        with Monitor(config=small) as monitor:
            record(monitor, 5)
            old = ipc.attach_ring(ipc.events_ring(small))
            try:
                assert old.lock_consumer()
                unlink_all(ring_name)
                big = load_config({"ring": ring_name, "lanes": 8})
                for ring in ipc.open_rings(big):
                    ring.close()
                old.retire()
                record(monitor, 7)
                assert len(old.pending(monitor_lane(old)).records) == 5
            finally:
                old.close()
            with ipc.attach_ring(ipc.events_ring(big)) as new:
                assert new.lanes == 8
                assert len(events_in(ring_name)) == 7
            assert monitor.counters.recorded == 12


def monitor_lane(ring: ringbuf.Ring) -> int:
    """The one lane of ``ring`` that holds records."""
    return next(n for n in range(ring.lanes) if ring.lane_state(n).head)


def produce(ring_name: str, count: int, started, unlinked, results) -> None:
    """A coordinator process recording steadily until the ring is unlinked
    under it, then ``count`` requests more; it reports how many."""
    writer_module.STALE_CHECK_S = 0.01
    with Monitor(ring_name) as monitor:
        started.set()
        i = 0
        while not unlinked.is_set() or i < count:
            record(monitor, 1, agent=f"agent{i % 3}")
            time.sleep(0.0005)
            i = i + 1 if unlinked.is_set() else 0
        results.put(monitor.counters.recorded)


class TestUnderRunningProducers:
    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_unlinked_mid_run_loses_nothing(self, ring_name, method):
        """Three processes record while the ring is unlinked and
        recreated under them: every request is in the ring at the end."""
        context = multiprocessing.get_context(method)
        started = [context.Event() for _ in range(3)]
        unlinked = context.Event()
        results = context.Queue()
        workers = [
            context.Process(
                target=produce,
                args=(ring_name, 200, event, unlinked, results),
            )
            for event in started
        ]
        for worker in workers:
            worker.start()
        for event in started:
            assert event.wait(30)
        time.sleep(0.05)
        unlink_all(ring_name)
        unlinked.set()
        recorded = sum(results.get(timeout=60) for _ in workers)
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        records = events_in(ring_name)
        assert len(records) == recorded
        assert np.unique(records["request_id"]).size == recorded


class TestUnderRunningThreads:
    def test_threads_follow_together(self, ring_name, quick_stale):
        """Four request threads of one process while the ring is unlinked
        under them: no error reaches a request, one lane each ring, and
        every record is in the ring now under the name."""
        per_thread = 500
        errors: list[BaseException] = []
        with Monitor(ring_name) as monitor:
            started = threading.Barrier(5)
            unlinked = threading.Event()

            def requests() -> None:
                started.wait(10)
                try:
                    while not unlinked.is_set():
                        record(monitor, 1)
                    record(monitor, per_thread)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=requests) for _ in range(4)]
            for thread in threads:
                thread.start()
            started.wait(10)
            time.sleep(0.01)
            unlink_all(ring_name)
            unlinked.set()
            for thread in threads:
                thread.join(60)
            assert errors == []
            assert monitor.counters.dropped == 0
            recorded = monitor.counters.recorded
            records = events_in(ring_name)
            with ipc.attach_ring(ipc.events_ring(monitor.config)) as ring:
                owned = [ring.lane_state(n).owned for n in range(ring.lanes)]
        assert len(records) == recorded
        assert sum(owned) == 1


class TestFeedbackFollows:
    def test_loop_reads_the_new_ring(self, ring_name, quick_stale):
        """After the ring is replaced, the loop's window is the new
        segment's, not the frozen old one."""
        with Monitor(ring_name) as monitor:
            loop = FeedbackLoop(monitor)
            try:
                record(monitor, 40)
                loop.update()
                assert loop.last_stats is not None
                assert loop.last_stats.records == 40
                unlink_all(ring_name)
                record(monitor, 15)
                loop.update()
                assert loop.last_stats.records == 55  # 40 carried + 15
                assert loop.failures == 0
            finally:
                loop.close()
