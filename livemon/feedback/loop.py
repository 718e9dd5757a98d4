"""
The live feedback loop: agent runs and requests become routing adjustments
(agent confidence, category thresholds, parallel caps) and quality alerts,
computed once per host by a leader, recorded for the daemon to store, and
read by every coordinator from shared memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

import ringbuf
from livemon import ipc
from livemon.feedback.decisions import Board
from livemon.feedback.follow import RingFollower
from livemon.feedback.journal import ActionJournal
from livemon.feedback.leader import LeaderLock, LeaderWatch
from livemon.feedback.rules import Action, FeedbackState, Policy, decide
from livemon.feedback.stats import WindowStats
from livemon.feedback.tracker import MAX_TRACKED, Tracker
from livemon.monitor import Monitor
from livemon.record import ALERT_ACTIONS, NO_LABEL

logger = logging.getLogger("livemon.feedback")

STALE_INTERVALS = 10  # a follower warns after this many silent intervals
STALE_MIN_S = 5.0  # and never sooner
_GOLDEN_64 = 0x9E3779B97F4A7C15  # odd, so request ids spread evenly


class FeedbackLoop:
    """Adjusts routing from the host's agent runs and requests, computed
    once per host.

    Every coordinator process has one; the process holding the host's
    leader lock (``leader.LeaderLock``, taken over within one interval
    when its holder dies) reads what the rings gained since its last
    update, feeds each agent's change detector and the other figures
    (``tracker.Tracker``), decides, records each action for the daemon,
    and publishes the standing decisions in shared memory
    (``decisions.Board``).  The others copy them out when they change:
    a few loads per update otherwise (the seq, the leader's heartbeat),
    and route() reads them in O(1).
    ``start`` runs ``update`` every ``policy.interval_s`` in a background
    thread, so no request pays for it; without the thread, ``route``
    calls ``maybe_update``, rate-limited the same way.

    Args:
        monitor: the process's monitor (its config names the rings).
        policy: thresholds, steps and guards.
        on_alert: called with each alert ``Action``, besides logging (in
            the leader's process: once per host).
        clock: monotonic seconds (injectable for simulations).

    Attributes:
        state: the standing decisions (``rules.FeedbackState``).
        actions_taken: actions decided (as leader) since creation.
        failures: updates that failed, and ``on_alert`` calls that
            raised (logged; routing went on).
        last_error: why the last update failed (None once one works).
        last_stats: the figures of the last update led (None otherwise).
    """

    def __init__(
        self,
        monitor: Monitor,
        policy: Policy | None = None,
        on_alert: Callable[[Action], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(monitor, Monitor):
            raise TypeError(
                f"FeedbackLoop takes a livemon.Monitor, not "
                f"{type(monitor).__name__}"
            )
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(
                f"policy must be a livemon.feedback.Policy or None, not "
                f"{type(policy).__name__}"
            )
        if (on_alert is not None and not callable(on_alert)) or not callable(
            clock
        ):
            raise TypeError("on_alert (or None) and clock must be callable")
        self.monitor = monitor
        self.policy = policy or Policy()
        self.on_alert = on_alert
        self._clock = clock
        self._next_update = 0.0
        self.state = FeedbackState()
        self.actions_taken = 0
        self.last_stats: WindowStats | None = None
        self._journal = ActionJournal(monitor)
        config = monitor.config
        warm = self.policy.window_per_lane
        self._runs = RingFollower(ipc.agents_ring(config), warm)
        self._requests = RingFollower(ipc.events_ring(config), warm)
        self._leader = LeaderLock(config)
        self._board: Board | None = None
        self._tracker: Tracker | None = None
        self.generation = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # update() runs in the thread or inside route(); close() must not
        # unmap a ring while a window is being copied out of it.
        self._rings_lock = threading.RLock()  # on_alert may close()
        self.failures = 0
        self.last_error: str | None = None
        self._closed = False
        self._watch = LeaderWatch(
            max(STALE_MIN_S, STALE_INTERVALS * self.policy.interval_s)
        )
        _LOOPS.add(self)

    @property
    def actions_dropped(self) -> int:
        """Actions not recorded for the daemon (feedback lane full, or no
        feedback ring)."""
        return self._journal.dropped

    @property
    def running(self) -> bool:
        """Whether the background thread is updating (not in a fork child)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def leading(self) -> bool:
        """Whether this process computes the host's decisions now."""
        return self._leader.held and self._tracker is not None

    def start(self) -> None:
        """Update in a background thread from now on. Idempotent; does
        nothing once closed."""
        if self.running or self._closed:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="livemon-feedback", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread and give leadership up (another process takes
        over; ``maybe_update`` here may take it back); return whether the
        thread ended within ``timeout_s``."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        with self._rings_lock:
            self._leader.release()
            self._tracker = None
        return thread is None or not thread.is_alive()

    @property
    def thread_id(self) -> int | None:
        """The background thread's ident, while it runs (for CPU clocks)."""
        thread = self._thread
        return thread.ident if thread is not None else None

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            self.safe_update()

    # -- what route() asks ----------------------------------------------------

    def confidence_multiplier(self, agent: str) -> float:
        """The factor applied to routing confidence for ``agent``."""
        return self.state.multipliers.get(self._label(agent), 1.0)

    def threshold(self, category: str) -> float:
        """The confidence a route to ``category`` must reach."""
        return self.state.thresholds.get(
            self._label(category), self.policy.base_threshold
        )

    def is_capped(self, agent: str) -> bool:
        """Whether ``agent`` is kept out of parallel fan-outs (too slow)."""
        return self._label(agent) in self.state.capped

    def explores(self, request_id: int) -> bool:
        """Whether this request routes as if no demotion applied (False
        for anything but an int: it routes as decided)."""
        if type(request_id) is not int:
            return False
        share = self.policy.exploration
        return (request_id * _GOLDEN_64 % 2**64) / 2**64 < share

    def _label(self, name: object) -> int:
        """The label id a decision about ``name`` is kept under; for what
        is not a text (a custom classifier's None), one matching nothing:
        route() asks with what pluggable objects gave, and never raises."""
        if not isinstance(name, str):
            return NO_LABEL
        # str.__str__: the text of a subclass (a StrEnum member) without
        # calling anything it overrides.
        return self.monitor.intern(str.__str__(name))

    # -- the loop -------------------------------------------------------------

    def maybe_update(self) -> list[Action]:
        """``update`` if ``policy.interval_s`` has passed since the last."""
        now = self._clock()
        if now < self._next_update:
            return []
        self._next_update = now + self.policy.interval_s
        return self.safe_update()

    def safe_update(self) -> list[Action]:
        """``update``, counting any failure instead of raising it.

        Monitoring never breaks routing: whatever goes wrong in the
        window, the statistics, ``on_alert`` or the recording is logged
        and counted in ``failures``.
        """
        try:
            actions = self.update()
        except Exception as exc:
            self.failures += 1
            self._report(exc)
            return []
        self.last_error = None
        return actions

    def _report(self, exc: Exception) -> None:
        """Log a failure once per reason, not at every update (twice a
        second per process); an expected one without a traceback."""
        reason = f"{type(exc).__name__}: {exc}"
        if reason == self.last_error:
            return
        self.last_error = reason
        if isinstance(exc, ringbuf.RingError | OSError):
            logger.warning(
                "feedback paused (routing goes on unadjusted; retrying "
                "every %.3g s): %s",
                self.policy.interval_s,
                reason,
            )
        else:
            logger.exception("feedback update failed")

    def update(self) -> list[Action]:
        """Lead (compute, decide, record, publish) if this process holds
        or can take the leader lock; else copy the host's decisions if
        they changed.  Nothing once closed (the standing decisions stay
        as they were)."""
        with self._rings_lock:
            if self._closed:  # route() may still call: lead no more
                return []
            board = self._board
            if board is None:
                # After a failure, no waiting for a creator: this may run
                # inside route(), and a bad segment stays bad.
                wait_s = 0.0 if self.last_error else 2.0
                board = self._board = Board.open(self.monitor.config, wait_s)
            led = self._leader.held  # False again in a forked child
            try:
                leads = self._leader.try_acquire()
            except (ringbuf.RingError, OSError):
                self._follow(board)  # a bad lock file: still follow
                raise
            if not leads:
                self._follow(board)
                return []
            if not led or self._tracker is None:
                self._take_over(board)
            return self._lead(board)

    def _follow(self, board: Board) -> None:
        """Copy the host's decisions if they changed; watch the leader."""
        if board.changed():
            self.state = board.read() or self.state
        self._watch.observe(board.leader, self._clock())

    @property
    def leader_silent_s(self) -> float | None:
        """Seconds since this process (a follower) last saw the host's
        leader beat; None when it leads or has seen no beat yet.

        A stopped (SIGSTOP) or hung leader keeps the lock, so nobody
        takes over and the decisions stand unchanged: this says how long.
        """
        return None if self.leading else self._watch.silent_s(self._clock())

    @property
    def leader_stale(self) -> bool:
        """Whether the leader has been silent for ``STALE_INTERVALS``
        update intervals (and at least ``STALE_MIN_S``); warned once."""
        silent = self.leader_silent_s
        return silent is not None and silent > self._watch.stale_after_s

    def _take_over(self, board: Board) -> None:
        """Start leading from the host's standing decisions and the
        recent history still in the rings."""
        self.state = board.read() or self.state
        self.generation = board.leader[1] + 1
        tracker = Tracker(self.policy)
        # The first reads copy each lane's recent window.
        tracker.add(self._runs.read(), self._requests.read())
        tracker.flush()
        for agent in self.state.multipliers:
            # Demoted by the previous leader: recovery needs fresh
            # evidence, whatever the replayed history suggested.
            tracker.detector(agent).demote()
        self._tracker = tracker
        board.publish(self.state)  # also repairs a write cut short
        logger.info("leading feedback (generation %d)", self.generation)

    def _lead(self, board: Board) -> list[Action]:
        tracker = self._tracker
        assert tracker is not None
        evicted = tracker.evicted
        tracker.add(self._runs.read(), self._requests.read())
        if tracker.evicted and not evicted:
            logger.warning(
                "more than %d agents or categories: the least recently "
                "seen are forgotten (names made unique per request?)",
                MAX_TRACKED,
            )
        stats = tracker.stats()
        self.last_stats = stats
        actions = self.decide(stats)
        try:
            for action in actions:
                self._record(action)
        finally:  # standing now: publish them whatever recording did
            if actions:
                board.publish(self.state)
            board.beat(self.generation)
        return actions

    def decide(self, stats: WindowStats) -> list[Action]:
        """Apply the rules to ``stats``; make their actions standing."""
        self.state, actions = decide(stats, self.state, self.policy)
        return actions

    # -- recording ------------------------------------------------------------

    def _record(self, action: Action) -> None:
        self.actions_taken += 1
        if action.action in ALERT_ACTIONS:
            logger.warning(
                "%s (category label %d)", action.message, action.subject
            )
            if self.on_alert is not None:
                try:
                    self.on_alert(action)
                except Exception:  # the user's callback: never our loop's
                    self.failures += 1
                    logger.exception("on_alert raised")
        else:
            logger.info("%s (label %d)", action.message, action.subject)
        self._journal.put(action)

    def _after_fork_in_child(self) -> None:
        # The parent's thread may have held these at fork (an update in
        # progress): the child's copies would never be released, and its
        # route() would hang in maybe_update().  The thread is not ours.
        self._rings_lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._tracker = None
        self._watch = LeaderWatch(self._watch.stale_after_s)

    def close(self) -> None:
        """Stop the thread, give back leadership and the feedback lane.
        Idempotent.

        Waits for an update in progress (the thread's, or one inside
        ``route``) before it unmaps the rings that update reads.
        """
        self.stop()
        with self._rings_lock:
            self._closed = True
            self._journal.close()
            self._runs.close()
            self._requests.close()
            if self._board is not None:
                self._board.close()
                self._board = None


_LOOPS: weakref.WeakSet[FeedbackLoop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loop in list(_LOOPS):
        loop._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
