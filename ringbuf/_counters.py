"""
A lane's four producer counters (lane header words 4-7), counted by its
writer: a base of ``RingWriter``, kept apart to keep the writer small.
"""

from __future__ import annotations

import threading

from ringbuf import _layout
from ringbuf._lanes import Lanes
from ringbuf.exceptions import RingClosed

_L_COUNTERS = _layout.L_COUNTERS


class LaneCounters:
    """``RingWriter.count``; the writer sets the attributes annotated."""

    _thread_lock: threading.Lock
    _closed: bool
    _lanes: Lanes
    _lane: int | None
    _lane_word: int
    _words: memoryview

    def count(self, counter: int, n: int = 1) -> None:
        """Add ``n`` to one of this lane's four producer counters.

        Lane header words 4-7, written only by the lane's producer and
        read by any consumer in ``LaneState.counters`` (one aligned 8-byte
        store, no syscall): what they count is the producer's to say.
        Like ``dropped`` they are never reset; a new owner of the lane
        goes on from its predecessor's values.  Nothing is counted while
        this process holds no lane (a forked child before its first put).

        Args:
            counter: which counter, 0..3.
            n: how much to add, 0..2**32.

        Raises:
            RingArgumentError, RingArgumentTypeError: bad counter or n.
            RingClosed: the writer or its ring is closed.
        """
        if counter.__class__ is not int or not 0 <= counter < 4:
            _layout.check_int("counter", counter, 0, _layout.COUNTERS - 1)
        if n.__class__ is not int or not 0 <= n <= 1 << 32:
            _layout.check_int("n", n, 0, 1 << 32)
        # No pid check: the at-fork hook lets a child's lane go (as for
        # put), so a child counts nothing until it claims its own.
        with self._thread_lock:
            if self._lane is None:
                if self._closed:
                    raise RingClosed("this RingWriter is closed")
                return
            try:
                self._words[self._lane_word + _L_COUNTERS + counter] += n
            except ValueError as exc:  # the ring's views were released
                raise self._lanes.closed_error() from exc
