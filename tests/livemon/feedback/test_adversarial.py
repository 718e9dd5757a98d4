"""
The feedback loop against what its authors did not try: nonsense Policy
values, a decisions segment that is foreign, another user's or open to
all (logged once, not at every update), a fork while an update holds the
loop's lock, and a SIGSTOPped leader, whose silence followers must see.
"""

from __future__ import annotations

import enum
import logging
import math
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from livemon import Monitor, ipc
from livemon.coordinator import Coordinator, Intent, Selection
from livemon.exceptions import ConfigError
from livemon.feedback import FeedbackLoop, Policy
from livemon.feedback.decisions import SIZE_BYTES, Board, verdicts_name
from livemon.feedback.leader import lock_path
from livemon.feedback.rules import FeedbackState
from livemon.feedback.tracker import MAX_TRACKED, Tracker
from livemon.record import FeedbackAction
from ringbuf import _layout
from tests.livemon.feedback.test_host import AGENT, config_of, wait_for
from tests.livemon.feedback.test_loop import requests as loop_requests
from tests.livemon.feedback.test_tracker import requests, runs

SPAWN = multiprocessing.get_context("spawn")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recent", 1.5),
        ("recent", True),
        ("baseline", 0),
        ("baseline", "1000"),
        ("window_per_lane", -1),
        ("min_samples", math.nan),
        ("interval_s", math.nan),
        ("interval_s", math.inf),
        ("z", -1.0),
        ("z", "x"),
        ("confidence_step", 1.0),
        ("confidence_step", 0),
        ("base_threshold", 2.0),
        ("threshold_step", -0.1),
        ("max_threshold", 0.1),  # below base_threshold 0.5
        ("quality_recovered", 0.5),  # above quality_drop 0.10
        ("slow_mean_ms", -1.0),
        ("slow_p95_ms", math.nan),
        ("slow_recover", 1.5),
        ("success_threshold", "0.8"),
        ("change_drops", 0.1),
        ("change_drops", (0.1, "x")),
        ("cusum_h", math.nan),
        ("confirm_z", math.inf),
        ("baseline_memory", 1.5),
        ("baseline_z", -1.0),
    ],
)
def test_nonsense_policy_is_refused_by_name(field, value):
    """Each parameter: a wrong type, NaN or out of range is a ConfigError
    naming it and what it may be (not a TypeError, not accepted)."""
    with pytest.raises(ConfigError, match=f"Policy.{field} must be"):
        Policy(**{field: value})


def test_policy_keeps_plain_values():
    """A list of drops is stored as a tuple (frozen: hashable), numpy
    numbers are accepted and counts stored as ints."""
    policy = Policy(
        change_drops=[0.1, 0.3], recent=np.int64(50), z=np.float32(2.0)
    )
    assert policy.change_drops == (0.1, 0.3)
    assert type(policy.recent) is int and policy.recent == 50
    assert hash(policy)


def test_feedback_loop_refuses_wrong_arguments(monitor):
    """Wrong types are refused at construction with a message."""
    with pytest.raises(TypeError, match="Monitor"):
        FeedbackLoop("ring")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        FeedbackLoop(monitor, {"interval_s": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        FeedbackLoop(monitor, on_alert="print")  # type: ignore[arg-type]


@pytest.mark.parametrize("problem", ["foreign", "open to all", "other user"])
def test_unusable_segment_is_logged_once(ring_name, caplog, problem):
    """A .verdicts segment of another layout, mode or owner pauses the
    feedback: counted at every update, logged once, without traceback,
    and routing's figures stay the defaults."""
    path = _layout.segment_path(verdicts_name(config_of(ring_name)))
    with open(path, "wb") as f:
        f.write(b"\x01" * SIZE_BYTES if problem == "foreign" else b"")
        f.truncate(SIZE_BYTES)
    os.chmod(path, 0o666 if problem == "open to all" else 0o600)
    if problem == "other user":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the segment away")
        os.chown(path, 65534, 65534)
    with Monitor(ring_name) as monitor:
        loop = FeedbackLoop(monitor)
        with caplog.at_level(logging.WARNING, "livemon.feedback"):
            for _ in range(5):
                assert loop.safe_update() == []
        loop.close()
    assert loop.failures == 5
    said = [r for r in caplog.records if r.name == "livemon.feedback"]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.WARNING and said[0].exc_info is None
    assert "rm " in said[0].getMessage()  # says what to do
    assert loop.last_error is not None
    assert loop.confidence_multiplier("coder") == 1.0


def test_fork_during_an_update_does_not_hang_the_child(monitor):
    """A thread of the parent holds the loop's lock (an update in
    progress) when a worker forks: the child's route() path still runs."""
    loop = FeedbackLoop(monitor, Policy(interval_s=0.01))
    held, release = threading.Event(), threading.Event()

    def updating():
        with loop._rings_lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=updating)
    thread.start()
    assert held.wait(30)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether an update finished
        # In the main thread: a new thread of the child may get the
        # holder's ident (pthread ids are reused), and an RLock would
        # then let it in.  A lock wait is interrupted by the alarm.
        signal.signal(
            signal.SIGALRM, lambda *_: (os.write(write, b"hung"), os._exit(0))
        )
        signal.alarm(20)
        loop.maybe_update()
        os.write(write, b"ok")
        os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 16)
    finally:
        release.set()
        thread.join(30)
        os.waitpid(pid, 0)
        os.close(read)
        loop.close()
    assert answer == b"ok"


def lead(ring_name: str) -> None:
    """A coordinator process whose loop leads (started first)."""
    with Monitor(config=config_of(ring_name)) as monitor:
        loop = FeedbackLoop(monitor, Policy(interval_s=0.02))
        loop.start()
        while True:
            time.sleep(1)


def test_a_stopped_leader_is_seen_as_silent(ring_name, caplog):
    """SIGSTOP keeps the lock (nobody takes over): a follower says how
    long the leader has been silent, warns once, and sees it resume."""
    config = config_of(ring_name)
    leader = SPAWN.Process(target=lead, args=(ring_name,), daemon=True)
    leader.start()
    now = [0.0]
    try:
        board = Board.open(config)
        wait_for(lambda: board.leader[2] != 0, 60, "the leader's beat")
        with Monitor(config=config) as monitor:
            follower = FeedbackLoop(monitor, clock=lambda: now[0])
            follower.update()
            assert not follower.leading
            assert follower.leader_silent_s == 0.0
            os.kill(leader.pid, signal.SIGSTOP)
            wait_for(lambda: _stopped(leader.pid), 30, "the stop")
            now[0] = 1.0
            follower.update()  # sees the last beat, if it came after 0
            with caplog.at_level(logging.WARNING, "livemon.feedback"):
                for t in (60.0, 61.0, 62.0):
                    now[0] = t
                    follower.update()
            assert 61.0 <= (follower.leader_silent_s or 0) <= 62.0
            assert follower.leader_stale
            warned = [r for r in caplog.records if "silent" in r.message]
            assert len(warned) == 1 and str(leader.pid) in warned[0].message
            os.kill(leader.pid, signal.SIGCONT)
            beat = board.leader[2]
            wait_for(lambda: board.leader[2] != beat, 30, "a new beat")
            now[0] = 63.0
            follower.update()
            assert follower.leader_silent_s == 0.0
            assert not follower.leader_stale
            follower.close()
        board.close()
    finally:
        os.kill(leader.pid, signal.SIGCONT)
        leader.kill()
        leader.join(30)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_unique_names_per_request_stay_bounded():
    """Agents (and categories) made unique per request: the leader keeps
    the MAX_TRACKED seen most recently, counts what it forgot, and a
    busy agent among them keeps its figures."""
    tracker = Tracker(Policy())
    busy = 7
    for batch in range(3):
        ids = np.arange(1, 601) + 10_000 * (batch + 1)  # 1,800 in all
        flood = runs(0, len(ids), start=batch * 10_000)
        flood["agent"] = ids
        steady = runs(busy, 50, start=batch * 10_000 + 5_000)
        asked = requests([busy], len(ids), start=batch * 10_000)
        asked["intent_category"] = ids
        tracker.add(np.concatenate([flood, steady]), asked)
        stats = tracker.stats()
        assert len(tracker.agents) <= MAX_TRACKED
        assert len(stats.agents) <= MAX_TRACKED
        assert len(stats.categories) <= MAX_TRACKED
    assert tracker.evicted >= 1801 - MAX_TRACKED  # agents alone
    assert stats.agents[busy].runs == 150


@pytest.mark.parametrize("content", [b"", b"\0"], ids=["empty", "no magic"])
def test_bad_segment_is_waited_for_once(ring_name, monkeypatch, content):
    """A segment left empty or without its magic (its creator died) may
    be a creator's still writing it: the first attempt waits for that,
    later ones do not (an update may run inside route())."""
    path = _layout.segment_path(verdicts_name(config_of(ring_name)))
    with open(path, "wb") as f:
        f.write(content * SIZE_BYTES)
    os.chmod(path, 0o600)
    sleeps = []
    real_sleep = time.sleep
    monkeypatch.setattr(
        time, "sleep", lambda s: (sleeps.append(s), real_sleep(s))
    )
    with Monitor(ring_name) as monitor:
        loop = FeedbackLoop(monitor)
        loop.safe_update()
        first = len(sleeps)
        for _ in range(3):
            loop.safe_update()
        loop.close()
    assert first > 0 and len(sleeps) == first
    assert loop.failures == 4


def test_a_closed_loop_leads_no_more(ring_name):
    """route() after close() (a shutdown in the wrong order) must not
    take leadership back nor reopen the rings nobody will close."""
    with Monitor(ring_name) as monitor:
        loop = FeedbackLoop(monitor)
        loop.update()
        assert loop.leading
        loop.close()
        assert loop.maybe_update() == [] and loop.update() == []
        loop.start()
        assert not loop.leading and not loop.running
        other = FeedbackLoop(monitor)
        other.update()
        assert other.leading  # the lock was free for another to take
        other.close()


def test_a_raising_on_alert_neither_hides_nor_loses_decisions(ring_name):
    """The user's on_alert raises: the alert still stands, is published
    for the other processes and recorded for the daemon; counted."""
    config = config_of(ring_name)

    def on_alert(action):
        raise RuntimeError("pager down")

    with Monitor(config=config) as monitor:
        loop = FeedbackLoop(monitor, on_alert=on_alert)
        loop.update()  # leads, from empty rings
        rng = np.random.default_rng(1)
        before = loop_requests(300, quality=0.9)
        before["quality_score"] += rng.normal(0, 0.02, 300)
        after = loop_requests(100, quality=0.7, start=300)
        with ipc.open_ring(config, ipc.events_ring(config)) as events:
            writer = events.writer()
            writer.put_many(np.concatenate([before, after]))
            writer.close()
        loop.update()  # reads them (requests wait one update)
        actions = loop.update()
        assert [a.action for a in actions] == [FeedbackAction.QUALITY_ALERT]
        assert loop.failures == 1
        board = Board.open(config)
        published = board.read()
        assert published is not None
        assert set(published.alerts) == set(loop.state.alerts) == {201}
        with ipc.attach_ring(ipc.feedback_ring(config)) as feedback:
            assert len(feedback.window(16).records) == 1
        board.close()
        loop.close()


def test_a_bad_lock_file_still_lets_a_process_follow(ring_name, caplog):
    """The leader lock file is open to all (planted?): this process can
    neither lead nor trust it, but it still reads the host's decisions."""
    config = config_of(ring_name)
    board = Board.open(config)
    board.publish(FeedbackState(multipliers={AGENT: 0.5}))
    path = lock_path(config)
    with open(path, "wb"):
        pass
    os.chmod(path, 0o666)
    with Monitor(config=config) as monitor:
        loop = FeedbackLoop(monitor)
        with caplog.at_level(logging.WARNING, "livemon.feedback"):
            loop.safe_update()
            loop.safe_update()
        assert loop.state.multipliers == {AGENT: 0.5}
        assert not loop.leading and loop.failures == 2
        assert "lock file" in (loop.last_error or "")
        loop.close()
    board.close()
    assert len(caplog.records) == 1


class _NoCategory:
    """A custom classifier that cannot tell the category."""

    def classify(self, query):
        return Intent(None)  # type: ignore[arg-type]


class _Agents(enum.StrEnum):
    CODER = "coder"


class _EnumSelector:
    """A custom selector naming its agents by StrEnum members."""

    def select(self, intent, query):
        return Selection((_Agents.CODER, 7), "parallel", 0.8)  # type: ignore[arg-type]

    def alternatives(self, intent):
        return ()


def test_route_takes_what_pluggable_objects_give(ring_name):
    """A category of None and an agent that is not a name never raise
    into route(); a StrEnum member gets its text's decisions."""
    with Monitor(ring_name) as monitor:
        loop = FeedbackLoop(monitor, Policy(exploration=0.0))
        loop._next_update = math.inf  # decisions set by hand below
        loop.state.multipliers[monitor.intern("coder")] = 0.5
        coordinator = Coordinator(
            monitor,
            classifier=_NoCategory(),
            selector=_EnumSelector(),
            feedback=loop,
        )
        decision = coordinator.route("anything")
        assert decision.selection.confidence == pytest.approx(0.4)
        assert loop.explores(None) is False  # type: ignore[arg-type]
        decision.context.end()
        loop.close()
