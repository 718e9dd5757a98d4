"""
Who computes the host's feedback: the one process holding an exclusive
``flock`` on the decisions segment's lock file (``<ring>.verdicts.lanes``
beside the rings, as every ring has one).  The kernel drops the lock when
its holder dies, so the next process to try takes over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import weakref

from livemon.config import Config
from livemon.feedback.decisions import verdicts_name
from ringbuf import _lanelock, _layout

logger = logging.getLogger("livemon.feedback")
_ALL: weakref.WeakSet[LeaderLock] = weakref.WeakSet()


def lock_path(config: Config) -> str:
    """The lock file, which ``ringbuf.unlink`` removes with the segment."""
    return _layout.lock_path(verdicts_name(config))


class LeaderLock:
    """A non-blocking claim on leadership, held until released or death.

    ``flock`` locks belong to the open file description, which a forked
    child shares: the child closes its inherited descriptor at fork, so
    a leader's children never keep leadership alive after it died, and
    never believe they hold it.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._fd: int | None = None
        self._held = False
        self._mutex = threading.Lock()
        _ALL.add(self)

    @property
    def held(self) -> bool:
        """Whether this process holds leadership now."""
        return self._held

    def try_acquire(self) -> bool:
        """Take leadership if nobody holds it; True if we hold it.

        Raises:
            ringbuf.RingUntrusted: the lock file may be another user's.
            OSError: the lock file cannot be opened.
        """
        with self._mutex:
            if self._held:
                return True
            if self._fd is None:
                self._fd = _lanelock.open_file(
                    lock_path(self._config),
                    self._config.mode,
                    self._config.gid,
                    allowed_group=self._config.gid,
                )
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                return False
            self._held = True
            return True

    def release(self) -> None:
        """Give leadership up (closing the file drops the lock). Idempotent."""
        with self._mutex:
            self._drop()

    def _drop(self) -> None:
        fd, self._fd, self._held = self._fd, None, False
        if fd is not None:
            os.close(fd)

    def _after_fork(self) -> None:
        # The mutex may have been held by another thread at fork: replace
        # it, and close the shared descriptor without unlocking (closing
        # our copy leaves the parent's lock in place).
        self._mutex = threading.Lock()
        self._drop()


class LeaderWatch:
    """A follower's view of the leader's heartbeat: how long since the
    beat word last changed, on this process's own monotonic clock (so
    no two processes' clocks are compared).

    Args:
        stale_after_s: silence after which the leader is warned about
            once (stopped or hung: it keeps the lock, nobody takes over).
    """

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._beat = 0
        self._seen_s = 0.0
        self._warned = False

    def silent_s(self, now_s: float) -> float | None:
        """Seconds without a beat; None before the first one seen."""
        return max(0.0, now_s - self._seen_s) if self._beat else None

    def observe(self, leader: tuple[int, int, int], now_s: float) -> None:
        """Note the board's (pid, generation, heartbeat ns); warn once
        when the beat stopped changing for ``stale_after_s``."""
        pid, _, beat = leader
        if beat != self._beat:
            if self._warned:
                logger.warning("feedback leader (pid %d) beats again", pid)
            self._beat, self._seen_s, self._warned = beat, now_s, False
            return
        silent = self.silent_s(now_s)
        if silent is not None and silent > self.stale_after_s:
            if not self._warned:
                logger.warning(
                    "feedback leader (pid %d) silent for %.1f s (stopped "
                    "or hung?): the host's decisions stand unchanged until "
                    "it resumes or exits",
                    pid,
                    silent,
                )
            self._warned = True


def _after_fork_in_child() -> None:
    for lock in list(_ALL):
        lock._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
