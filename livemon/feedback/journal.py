"""
The feedback ring's writer (``<ring>.feedback``): each action the leader
takes, recorded once as a fixed-width record for the daemon to store.
"""

from __future__ import annotations

import os
import time

import ringbuf
from livemon import ipc
from livemon.feedback.rules import Action
from livemon.monitor import Monitor
from livemon.record import FEEDBACK_DTYPE, NO_LABEL, struct_for

_FEEDBACK = struct_for(FEEDBACK_DTYPE)


class ActionJournal:
    """This process's lane of the feedback ring, opened at the first
    action and reopened when the daemon replaced the ring.

    Attributes:
        dropped: actions not recorded (lane full, or no feedback ring).
    """

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._ring: ringbuf.Ring | None = None
        self._writer: ringbuf.RingWriter | None = None
        self.dropped = 0

    def put(self, action: Action) -> bool:
        """Record ``action``; False (counted in ``dropped``) if it was not."""
        writer = self._connected()
        if writer is None:
            self.dropped += 1
            return False
        packed = _FEEDBACK.pack(
            time.time_ns(),
            os.getpid(),
            int(action.action),
            action.subject,
            action.old_value,
            action.new_value,
            action.statistic,
            action.threshold,
            action.samples,
            action.window_records,
            self._monitor.intern(action.message) or NO_LABEL,
        )
        try:
            stored = writer.put(packed)
        except (ringbuf.RingError, OSError):  # closed under us
            stored = False
        if not stored:
            self.dropped += 1
        return stored

    def _connected(self) -> ringbuf.RingWriter | None:
        if self._writer is not None and self._writer.stale:
            self.close()  # replaced or retired: open the new one
        if self._writer is None:
            config = self._monitor.config
            try:
                self._ring = ipc.open_ring(config, ipc.feedback_ring(config))
                self._writer = self._ring.writer()
            except (ringbuf.RingError, OSError):
                self.close()
                return None
        return self._writer

    def close(self) -> None:
        """Give the lane back and detach (reopened by the next ``put``)."""
        if self._writer is not None:
            self._writer.close()
        if self._ring is not None:
            self._ring.close()
        self._writer = self._ring = None
