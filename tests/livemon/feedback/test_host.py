"""
Feedback once per host, with real processes and real shared memory: the
seqlocked decisions segment never yields a torn copy, one process leads,
and when it is SIGKILLed another takes over while the decisions stay
readable; a leader's forked child never holds leadership.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

import ringbuf
from livemon import Monitor, ipc
from livemon.config import load_config
from livemon.feedback import FeedbackLoop, Policy
from livemon.feedback.decisions import (
    W_SEQ,
    Board,
    TooManyDecisions,
    verdicts_name,
)
from livemon.feedback.leader import LeaderLock
from livemon.feedback.rules import FeedbackState
from tests.livemon.feedback.test_tracker import runs

AGENT = 101
SPAWN = multiprocessing.get_context("spawn")


def config_of(ring_name):
    return load_config({"ring": ring_name, "lanes": 8})


def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- the seqlock ---------------------------------------------------------


def publish_forever(ring_name, started) -> None:
    """Publish states whose values all equal a counter, and whose size
    alternates: a torn copy would mix values or sizes."""
    board = Board.open(config_of(ring_name))
    started.set()
    k = 0
    while True:
        k += 1
        size = 1000 if k % 2 else 300
        board.publish(
            FeedbackState(multipliers={i: float(k) for i in range(1, size)})
        )


class TestBoard:
    def test_round_trip(self, ring_name):
        """Every kind of decision comes back as published."""
        board = Board.open(config_of(ring_name))
        assert board.read() is None  # nothing published yet
        state = FeedbackState(
            multipliers={1: 0.9, -5: 0.3},
            thresholds={7: 0.55},
            capped={8},
            alerts={9: "quality regression"},
        )
        board.publish(state)
        other = Board.open(config_of(ring_name))
        assert not board.changed() and other.changed()
        assert other.read() == state
        assert not other.changed()
        board.close()
        other.close()

    def test_reader_never_sees_a_torn_copy(self, ring_name):
        """A process publishes as fast as it can; every copy we take is
        one whole state."""
        board = Board.open(config_of(ring_name))
        started = SPAWN.Event()
        writer = SPAWN.Process(
            target=publish_forever, args=(ring_name, started), daemon=True
        )
        writer.start()
        try:
            assert started.wait(60)
            seen = set()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline or len(seen) < 20:
                state = board.read()
                if state is None:
                    continue  # every attempt met a write: keep the last
                values = set(state.multipliers.values())
                assert len(values) == 1, "torn: values of two states"
                (k,) = values
                expected = 999 if int(k) % 2 else 299
                assert len(state.multipliers) == expected, "torn: sizes"
                seen.add(k)
        finally:
            writer.kill()
            writer.join(10)
            board.close()

    def test_a_writer_that_died_mid_write_is_repaired(self, ring_name):
        """seq left odd: readers get nothing new; the next publish fixes it."""
        board = Board.open(config_of(ring_name))
        board.publish(FeedbackState(multipliers={1: 0.5}))
        words = board._segment.words
        words[W_SEQ] = words[W_SEQ] + 1  # as if killed inside publish
        assert board.read() is None
        board.publish(FeedbackState(multipliers={1: 0.7}))
        assert board.read() == FeedbackState(multipliers={1: 0.7})
        assert board.seq % 2 == 0
        board.close()

    def test_too_many_decisions_are_refused(self, ring_name):
        """Beyond the segment's entries: a typed error, nothing written."""
        board = Board.open(config_of(ring_name))
        huge = FeedbackState(multipliers={i: 0.5 for i in range(1, 5000)})
        with pytest.raises(TooManyDecisions, match="4096"):
            board.publish(huge)
        assert board.seq == 0
        board.close()

    def test_a_foreign_segment_is_refused(self, ring_name):
        """Not a decisions segment: a typed error saying what to remove."""
        config = config_of(ring_name)
        path = f"/dev/shm/{verdicts_name(config)}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.write(fd, b"\xff" * 200_000)
        os.close(fd)
        with pytest.raises(ringbuf.RingCorrupt, match="rm "):
            Board.open(config)


# -- leadership ----------------------------------------------------------


def hold_lock(ring_name, held, fork_child_pid) -> None:
    """Take leadership; optionally fork a child that outlives us."""
    lock = LeaderLock(config_of(ring_name))
    assert lock.try_acquire()
    if fork_child_pid is not None:
        pid = os.fork()
        if pid == 0:  # the child: inherited the descriptor, not the lock
            fork_child_pid.value = os.getpid() if not lock.held else -1
            time.sleep(60)
            os._exit(0)
        wait_for(lambda: fork_child_pid.value != 0, what="the fork")
    held.set()
    time.sleep(60)


def coordinator(ring_name, reports) -> None:
    """A coordinator process: its loop's thread, reported every 20 ms."""
    with Monitor(config=config_of(ring_name)) as monitor:
        loop = FeedbackLoop(monitor, Policy(interval_s=0.05))
        loop.start()
        while True:
            reports.put(
                (os.getpid(), loop.leading, loop.state.multipliers.get(AGENT))
            )
            time.sleep(0.02)


class TestLeader:
    @pytest.mark.parametrize("fork", [False, True], ids=["plain", "forked"])
    def test_lock_is_exclusive_and_taken_over(self, ring_name, fork):
        """Held elsewhere: refused; holder SIGKILLed: ours at once, even
        while the holder's forked child still lives."""
        held = SPAWN.Event()
        child_pid = SPAWN.Value("i", 0) if fork else None
        holder = SPAWN.Process(
            target=hold_lock, args=(ring_name, held, child_pid)
        )
        holder.start()
        lock = LeaderLock(config_of(ring_name))
        try:
            assert held.wait(60)
            assert not lock.try_acquire() and not lock.held
            os.kill(holder.pid, signal.SIGKILL)
            # Polled, not join(): the forked child holds the holder's
            # sentinel pipe open, so join() would wait out its timeout.
            wait_for(lambda: not holder.is_alive(), 30, "the holder's end")
            if fork:
                assert child_pid.value > 0  # alive, never believed it led
            wait_for(lock.try_acquire, 10, "the lock after the kill")
            assert lock.held
        finally:
            lock.release()
            if fork and child_pid.value > 0:
                os.kill(child_pid.value, signal.SIGKILL)

    def test_one_leader_and_a_takeover_after_sigkill(self, ring_name):
        """Three coordinators: one leads and records every action once;
        all follow its decisions; SIGKILL it and another takes over
        within a bounded time while the decisions stay readable."""
        config = config_of(ring_name)
        reports = SPAWN.Queue()
        procs = [
            SPAWN.Process(target=coordinator, args=(ring_name, reports))
            for _ in range(3)
        ]
        for proc in procs:
            proc.start()
        latest: dict[int, tuple[bool, float | None]] = {}

        def drain_reports():
            while not reports.empty():
                pid, leading, multiplier = reports.get()
                latest[pid] = (leading, multiplier)

        def all_demoted():
            drain_reports()
            alive = [p.pid for p in procs if p.is_alive()]
            return all(
                latest.get(pid, (False, None))[1] is not None for pid in alive
            )

        try:
            wait_for(lambda: (drain_reports(), len(latest) == 3)[1], 120)
            with ipc.open_ring(config, ipc.agents_ring(config)) as agents:
                writer = agents.writer()
                writer.put_many(runs(AGENT, 200, success=0.3))
                writer.close()
            wait_for(all_demoted, 60, "every coordinator to see the demotion")
            leaders = [pid for pid, (lead, _) in latest.items() if lead]
            assert len(leaders) == 1
            with ipc.attach_ring(ipc.feedback_ring(config)) as feedback:
                recorded = feedback.window(1024).records
            assert len(recorded) and set(recorded["pid"]) == {leaders[0]}

            board = Board.open(config)
            os.kill(leaders[0], signal.SIGKILL)
            killed_at = time.monotonic()
            state = board.read()  # readable while nobody leads
            assert state is not None and state.multipliers[AGENT] < 1
            latest.clear()

            def new_leader():
                drain_reports()
                return any(
                    lead and pid != leaders[0]
                    for pid, (lead, _) in latest.items()
                )

            wait_for(new_leader, 30, "a new leader")
            takeover_s = time.monotonic() - killed_at
            assert takeover_s < 10  # interval 0.05 s; generous under load
            wait_for(all_demoted, 30, "the demotion to stand")
            pid, generation, _ = board.leader
            assert pid != leaders[0] and generation == 2
            board.close()
        finally:
            for proc in procs:
                proc.kill()
                proc.join(30)
