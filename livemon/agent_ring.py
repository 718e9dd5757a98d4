"""
A Monitor's lane in the agents ring (``<ring>.agents``): where a request's
agent runs go at ``end``, with the events ring's rules: spill when full,
follow a replaced ring, count every loss, never raise (unless strict).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

import ringbuf
from livemon import ipc
from livemon import record as rec
from livemon.config import Config
from livemon.exceptions import MonitoringUnavailable
from livemon.labels import LabelCache
from livemon.sink import Counters
from livemon.spill import SpillStatus
from livemon.spill.process import EVENTS, ProcessSpill

__all__ = ["AgentLane"]

logger = logging.getLogger("livemon")

_FAILURES = (ringbuf.RingError, ValueError, OSError)


class _SpillCounts:
    """What a ``ProcessSpill`` counts, told as agent-run counters.

    The spill names its counters after events; an agent run it takes is
    ``agent_runs_spilled``.  A refusal's reason is logged by the spill,
    and the run is counted in ``agent_runs_dropped`` by ``AgentLane``.
    """

    labels_spilled = 0  # agent runs spill no labels
    dropped_spill_cap = 0
    dropped_disk_full = 0
    dropped_io_error = 0

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    @property
    def spilled(self) -> int:
        """The spill's ``spilled`` count is ``agent_runs_spilled``."""
        return self._counters.agent_runs_spilled

    @spilled.setter
    def spilled(self, value: int) -> None:
        self._counters.agent_runs_spilled = value


class AgentLane:
    """This process's lane of the agents ring, claimed at its first run.

    A process that never logs an agent never holds an agents lane.  Label
    texts the runs name (agent names, errors) go through the Monitor's
    label cache, flushed before the runs that use them, as for events.

    Args:
        config: the Monitor's config (ring name, geometry, spill).
        counters: the Monitor's counters (``agent_runs_*``).
        labels: the Monitor's label cache.
        strict: raise ``MonitoringUnavailable`` instead of counting a loss.
        retry_interval_s: how long after a failed attach it is tried again.
    """

    _ring: ringbuf.Ring | None = None
    _writer: ringbuf.RingWriter | None = None
    _closed = False
    _reported: str | None = None  # the last attach failure logged

    def __init__(
        self,
        config: Config,
        counters: Counters,
        labels: LabelCache,
        *,
        strict: bool = False,
        retry_interval_s: float = 5.0,
    ) -> None:
        self.config = config
        self.spec = ipc.agents_ring(config)
        self._counters = counters
        self._labels = labels
        self._strict = strict
        self._retry_interval_s = retry_interval_s
        self._retry_at = 0.0
        self._lock = threading.RLock()  # the slow paths only, as Monitor's
        self._spill: ProcessSpill | None = None
        if config.spill:
            self._spill = ProcessSpill(
                ipc.spill_root(config),
                ipc.spill_options(config),
                _SpillCounts(counters),
                retry_interval_s,
            )

    def put_runs(self, runs: list[bytes]) -> int:
        """Store a request's packed runs; return how many were stored.

        Raises:
            MonitoringUnavailable: (strict) a run was lost.
        """
        writer = self._writer or self._connected()
        if writer is None:
            return self._lost("agent_runs_unavailable", len(runs))
        if self._labels.pending:  # labels before the runs that use them
            self._labels.flush()
        in_ring = spilled = 0
        for i, packed in enumerate(runs):
            try:
                stored = self._put(writer, packed)
            except ringbuf.LanesExhausted as exc:  # a forked child found none
                # As the events' lanes_exhausted: lost, never spilled (a
                # spill belongs to a lane), counted and said once.
                self._counters.agent_runs_recorded += in_ring
                self._warn_once(str(exc))
                lost = self._lost("agent_runs_unavailable", len(runs) - i)
                return in_ring + spilled + lost
            if stored:
                in_ring += 1
                continue
            if self._stale(writer):
                writer = self._follow(writer)
                if writer is None:
                    lost = len(runs) - i
                    self._counters.agent_runs_recorded += in_ring
                    return (
                        in_ring
                        + spilled
                        + self._lost("agent_runs_unavailable", lost)
                    )
                if self._put(writer, packed):
                    in_ring += 1
                    continue
            spilled += self._spilled(packed, writer)
        self._counters.agent_runs_recorded += in_ring
        spill = self._spill
        if spill is not None and spill.active:
            spill.settle()
        return in_ring + spilled

    def close(self) -> None:
        """Give back the lane and detach, for good. Idempotent."""
        with self._lock:
            self._closed = True
            self._detach()

    def after_fork_in_child(self) -> None:
        """Spill anew from the child's own lane (the parent's is not ours),
        with a new lock (a thread of the parent may have held the old)."""
        self._lock = threading.RLock()
        if self._spill is not None:
            self._spill = self._spill.renewed()

    # -- internals -------------------------------------------------------

    @staticmethod
    def _put(writer: ringbuf.RingWriter, packed: bytes) -> bool:
        try:
            return writer.put(packed)
        except ringbuf.LanesExhausted:
            raise  # not a closed ring: put_runs counts it
        except _FAILURES:  # closed under us: _stale says so
            return False

    @staticmethod
    def _stale(writer: ringbuf.RingWriter) -> bool:
        try:
            return writer.stale
        except _FAILURES:  # closed: move to the ring under the name
            return True

    def _spilled(self, packed: bytes, writer: ringbuf.RingWriter) -> int:
        """Spill a run the full lane refused; 1 if stored, else counted."""
        spill, ring = self._spill, self._ring
        if (
            spill is not None
            and ring is not None
            and spill.put(EVENTS, packed, ring, writer) is SpillStatus.STORED
        ):
            return 1
        return self._lost("agent_runs_dropped", 1)

    def _lost(self, counter: str, count: int) -> int:
        setattr(
            self._counters, counter, getattr(self._counters, counter) + count
        )
        if self._strict:
            raise MonitoringUnavailable(
                f"{count} agent run(s) lost ({counter}): is livemon-daemon "
                f"running? (ring {self.spec.name!r})"
            )
        return 0

    def _connected(self) -> ringbuf.RingWriter | None:
        with self._lock:
            if self._writer is not None or self._closed:
                return self._writer
            if time.monotonic() < self._retry_at:
                return None
            return self._connect()

    def _connect(self) -> ringbuf.RingWriter | None:
        try:
            ring = ipc.open_ring(self.config, self.spec)
        except _FAILURES as exc:
            self._unavailable(exc)
            return None
        try:
            self._writer = ring.writer()
        except _FAILURES as exc:
            ring.close()
            self._unavailable(exc)
            return None
        self._ring = ring
        return self._writer

    def _unavailable(self, exc: Exception) -> None:
        # An agents ring of another layout (a release that changed
        # AGENT_RUN_DTYPE without a new name) must never stop requests:
        # only the runs are lost, counted, and the attach tried again.
        self._warn_once(str(exc))
        self._retry_at = time.monotonic() + self._retry_interval_s
        if self._strict:
            raise MonitoringUnavailable(
                f"cannot open ring {self.spec.name!r}: {exc}"
            ) from exc

    def _warn_once(self, reason: str) -> None:
        """Say why runs are lost, once per reason, not at every retry."""
        if reason != self._reported:
            logger.warning(
                "cannot write agent runs to ring %r (retrying every %.0f "
                "s; the requests are recorded meanwhile): %s",
                self.spec.name,
                self._retry_interval_s,
                reason,
            )
        self._reported = reason

    def _follow(self, stale: ringbuf.RingWriter) -> ringbuf.RingWriter | None:
        """Move to the ring now under the name, carrying along what no
        consumer is left to drain (as ``Monitor._follow`` for events)."""
        with self._lock:
            if self._closed:
                return None
            if self._writer is not stale:  # another thread moved already
                return self._writer
            left = self._orphaned(stale)
            self._detach()
            writer = self._connect()
            if writer is None:
                self._counters.agent_runs_dropped += len(left)
                return None
            if len(left):
                logger.warning(
                    "ring %r was replaced or retired under this process: "
                    "%d agent runs carried over",
                    self.spec.name,
                    len(left),
                )
                try:
                    moved = writer.put_many(left)
                except _FAILURES:
                    moved = 0
                self._counters.agent_runs_dropped += len(left) - moved
            return writer

    @staticmethod
    def _orphaned(writer: ringbuf.RingWriter) -> Any:
        try:
            if not writer.consumer_attached():
                return writer.unconsumed()
        except _FAILURES:
            pass
        return np.empty(0, rec.AGENT_RUN_DTYPE)

    def _detach(self) -> None:
        if self._spill is not None:
            self._spill.close()  # a spill belongs to its ring's lane
        if self._writer is not None:
            self._writer.close()
        if self._ring is not None:
            self._ring.close()
        self._writer = self._ring = None
