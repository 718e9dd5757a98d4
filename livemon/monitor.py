"""
The coordinator's side: a ``Monitor`` per process, one ``RequestContext`` per
request, one fixed-width record written into the ring when it ends.

Nothing here raises into a request unless ``strict=True``: failures are
counted in ``Monitor.counters``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

import ringbuf
from livemon import ipc
from livemon import record as rec
from livemon._checks import _exact_str
from livemon.agent_ring import AgentLane
from livemon.config import Config, load_config
from livemon.context import RequestContext
from livemon.exceptions import InvalidField, MonitoringUnavailable
from livemon.labels import LabelCache
from livemon.sink import Counters, Sink
from livemon.spill import SpillStatus
from livemon.spill.process import EVENTS, LABELS, ProcessSpill

__all__ = ["Counters", "Monitor"]

logger = logging.getLogger("livemon")

_MAX_CACHED_LABELS = 100_000
_RING_FAILURES = (ringbuf.RingError, ValueError, OSError)
_STORED = SpillStatus.STORED


class Monitor:
    """Records requests of this process into the shared ring.

    When this process's lane is full (no daemon draining, or a burst) and
    ``config.spill`` is set, the record goes to this lane's spill files
    under ``ipc.spill_root(config)`` instead (``counters.spilled``), and so do
    label texts the labels lane refuses (``counters.labels_spilled``);
    the daemon replays them exactly once (``daemon.replay``).  What the
    spill refuses too is dropped, counted per reason.  The spill is
    opened when the lane is first found full, and sealed once ring puts
    have succeeded again for ``SPILL_IDLE_S``, or at ``close()``.

    Args:
        ring: ring name; else ``config``, ``LIVEMON_RING``, the config
            file, the default ``livemon``.
        config: a resolved ``Config`` (overrides ``ring``'s lookup).
        strict: raise typed errors instead of counting failures.

    Attributes:
        retry_interval_s: how long after a failed attempt the rings are
            tried again (a class attribute; tests may lower it).
        geometry_mismatch: None, or what differs when the rings already
            existed with another geometry than the config's (also logged
            once as a warning on logger ``livemon``).

    Raises:
        ConfigError: the settings are wrong (always raised: it is
            misconfiguration, found at construction).
        MonitoringUnavailable: (strict) the ring cannot be opened.
    """

    retry_interval_s = 5.0
    geometry_mismatch: str | None = None
    _events: ringbuf.RingWriter | None = None
    _labels: ringbuf.RingWriter | None = None
    _rings: tuple[ringbuf.Ring, ringbuf.Ring] | None = None
    _closed = False
    _lanes_exhausted = False  # the last attempt found no free lane
    _said: set[type[Exception]]  # causes already logged (_say_once)
    _spills: ProcessSpill | None = None  # None: config.spill is off

    def __init__(
        self,
        ring: str | None = None,
        *,
        config: Config | None = None,
        strict: bool = False,
    ) -> None:
        self.config = config or load_config({"ring": ring})
        self.strict = strict
        self.counters = Counters()
        self._said = set()
        self._label_cache = LabelCache(
            self._put_label, self.counters, _MAX_CACHED_LABELS
        )
        # The same dict object: _write checks it without a lookup chain.
        self._pending_labels = self._label_cache.pending
        # Agent runs: their own ring and lane, claimed at the first run.
        self._agents = AgentLane(
            self.config,
            self.counters,
            self._label_cache,
            strict=strict,
            retry_interval_s=self.retry_interval_s,
        )
        self._sink = Sink(
            strict=strict,
            counters=self.counters,
            labels=self._label_cache,
            write=self._write,
            agents=self._agents.put_runs,
        )
        self._retry_at = 0.0
        # Held only on the slow paths (connect, follow, close): two
        # threads of one process never claim two lanes or close a writer
        # under each other's put.
        self._reconnecting = threading.RLock()
        if self.config.spill:
            self._spills = ProcessSpill(
                ipc.spill_root(self.config),
                ipc.spill_options(self.config),
                self.counters,
                self.retry_interval_s,
            )
        self._connect()
        _MONITORS.add(self)

    def request(
        self, query: str, *, category: str | None = None
    ) -> RequestContext:
        """Start monitoring one request.

        Use it as ``with monitor.request(q) as ctx:``, or, when the
        completion arrives in a callback, ``ctx = monitor.request(q)``
        and later ``ctx.end()``.

        Args:
            query: the user's query; only its hash is stored.
            category: the query's category, if known before classification.
        """
        return RequestContext(self._sink, query, category)

    @property
    def available(self) -> bool:
        """Whether records currently reach a ring."""
        return self._events is not None

    @property
    def pid(self) -> int:
        """The process these records come from (renewed after a fork)."""
        return self._sink.pid

    def intern(self, text: str) -> int:
        """Return the label id of ``text``, announcing it once per process.

        Raises:
            InvalidField: ``text`` is not a ``str`` (any mode: this is a
                direct call, not a field of a request).
        """
        plain = _exact_str(text)  # a subclass by its value, as fields are
        if plain is None:
            raise InvalidField(
                "text", f"a label is a str, got {type(text).__name__}"
            )
        return self._label_cache.intern(plain)

    def close(self) -> None:
        """Give back this process's lanes and detach, for good. Idempotent.

        Requests ended later are counted in ``counters.unavailable``.
        """
        with self._reconnecting:
            self._closed = True
            self._detach()
        self._agents.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------

    def _write(self, packed: bytes) -> bool:
        events = self._events
        if events is None:
            events = self._reconnected()
            if events is None:
                return False
        if self._pending_labels:  # labels before the events that use them
            self._label_cache.flush()
        try:
            stored = events.put(packed)
            stale = not stored and events.stale
        except ringbuf.LanesExhausted as exc:  # a forked child found none
            self._say_once(exc, str(exc))
            return self._lost("lanes_exhausted", str(exc), exc)
        except ringbuf.RingClosed:
            # Another thread closed the Monitor, or moved it to a new ring
            # between our read of the writer and its put.
            return self._follow(packed, events)
        except _RING_FAILURES as exc:
            message = f"cannot write to ring {self.config.ring!r}: {exc}"
            return self._lost("failed", message, exc)
        if stored:
            self.counters.recorded += 1
            spills = self._spills
            if spills is not None and spills.active:  # the only cost
                spills.settle()
            return True
        if stale:
            return self._follow(packed, events)
        return self._spill_event(packed)

    def _spill_event(self, packed: bytes) -> bool:
        """Spill a record the full lane refused; count it if that fails."""
        spills, rings, events = self._spills, self._rings, self._events
        if (
            spills is not None
            and rings is not None
            and events is not None
            and spills.put(EVENTS, packed, rings[0], events) is _STORED
        ):
            return True
        return self._lost(
            "dropped",
            f"ring {self.config.ring!r} lane is full: is livemon-daemon "
            "running? (or raise capacity_records)",
        )

    def _follow(self, packed: bytes, stale: ringbuf.RingWriter) -> bool:
        """Move to the ring now under our ring's name, then write.

        Our segment was retired (the daemon replaces it, say with more
        lanes, and drains it to the end) or unlinked and perhaps replaced
        (a cleanup script, ``RemoveIPC=yes``).  With no consumer left on
        it, nobody would drain what we wrote there: those records move
        along, labels first, into the new ring.  One thread moves; the
        others, arriving with the same ``stale`` writer, use its result.
        """
        with self._reconnecting:
            if self._closed:
                return self._lost("unavailable", "this Monitor is closed")
            if self._events is not stale:  # another thread moved already
                return self._put_moved(packed)
            return self._move(packed)

    def _put_moved(self, packed: bytes) -> bool:
        events = self._events
        try:
            stored = events is not None and events.put(packed)
        except _RING_FAILURES:
            stored = False
        if stored:
            self.counters.recorded += 1
            return True
        return self._spill_event(packed)  # the new ring is full already

    def _move(self, packed: bytes) -> bool:
        labels_left, events_left = self._unconsumed_if_orphaned()
        self._label_cache.clear()  # announced into the old ring only
        events, labels = self._connect_again(), self._labels
        if events is None or labels is None:
            return self._lost(
                "unavailable", f"ring {self.config.ring!r} is unavailable"
            )
        logger.warning(
            "ring %r was replaced or retired under this process: now "
            "writing to its new segment (%d records carried over)",
            self.config.ring,
            len(labels_left) + len(events_left),
        )
        self.counters.labels_lost += len(labels_left) - labels.put_many(
            labels_left
        )
        self.counters.dropped += len(events_left) - events.put_many(
            events_left
        )
        if self._pending_labels:
            self._label_cache.flush()
        return self._put_moved(packed)

    def _unconsumed_if_orphaned(self) -> tuple[Any, Any]:
        """This process's undrained labels and events, if no consumer is
        left to drain them from the old segment (else none)."""
        empty = (np.empty(0, rec.LABEL_DTYPE), np.empty(0, rec.RECORD_DTYPE))
        labels, events = self._labels, self._events
        if labels is None or events is None:
            return empty
        try:
            if events.consumer_attached():
                return empty
            return labels.unconsumed(), events.unconsumed()
        except _RING_FAILURES:  # beyond reading: what is there stays there
            return empty

    def _lost(
        self, counter: str, message: str, cause: Exception | None = None
    ) -> bool:
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        if self.strict:
            raise MonitoringUnavailable(message) from cause
        return False

    def _reconnected(self) -> ringbuf.RingWriter | None:
        """Try the rings again if it is time; count the record if not."""
        with self._reconnecting:
            if self._closed:
                self._lost("unavailable", "this Monitor is closed")
                return None
            if self._events is not None:  # another thread reconnected
                return self._events
            if time.monotonic() >= self._retry_at:
                events = self._connect_again()
                if events is not None:
                    return events
        counter = "lanes_exhausted" if self._lanes_exhausted else "unavailable"
        self._lost(counter, f"ring {self.config.ring!r} is unavailable")
        return None

    def _connect_again(self) -> ringbuf.RingWriter | None:
        self._detach()
        self._connect()
        return self._events

    def _put_label(self, text: str) -> bool:
        labels = self._labels
        if labels is None:
            return False
        record = rec.label_record(text)
        try:
            if labels.put(record):
                return True
            if labels.stale:
                return False
        except _RING_FAILURES:
            return False
        # The labels lane is full: spill the label so that it survives an
        # outage longer than the held labels last (see LabelCache); if
        # that fails too, the cache holds it and tries again later.
        spills, rings = self._spills, self._rings
        return (
            spills is not None
            and rings is not None
            and spills.put(LABELS, record, rings[1], labels) is _STORED
        )

    def _connect(self) -> None:
        try:
            rings = ipc.open_rings(self.config)
        except (ringbuf.RingError, OSError) as exc:
            self._unavailable(exc, f"cannot open ring {self.config.ring!r}")
            return
        self._check_geometry(rings)
        try:
            self._events = rings[0].writer()
            self._labels = rings[1].writer()
        except (ringbuf.RingError, OSError) as exc:
            if self._events is not None:  # its lane must not stay held
                self._events.close()
            self._events = self._labels = None
            for ring in rings:
                ring.close()
            self._unavailable(exc, str(exc))
            return
        self._rings = rings
        self._lanes_exhausted = False

    def _unavailable(self, exc: Exception, message: str) -> None:
        self._lanes_exhausted = isinstance(exc, ringbuf.LanesExhausted)
        if self.strict:
            raise MonitoringUnavailable(f"{message}: {exc}") from exc
        self._say_once(exc, message)
        self._retry_at = time.monotonic() + self.retry_interval_s

    def _say_once(self, exc: Exception, message: str) -> None:
        """Log why records are not reaching a ring, once per kind of cause
        (the counters say how many; retries must not flood the log)."""
        if type(exc) in self._said:
            return
        self._said.add(type(exc))
        hint = (
            ": raise 'lanes' and restart livemon-daemon"
            if isinstance(exc, ringbuf.LanesExhausted)
            else ""
        )
        logger.warning(
            "%s: this process's requests are counted, not recorded%s",
            message,
            hint,
        )

    def _check_geometry(
        self, rings: tuple[ringbuf.Ring, ringbuf.Ring]
    ) -> None:
        mismatch = ipc.geometry_mismatch(self.config, rings)
        if mismatch is not None and mismatch != self.geometry_mismatch:
            logger.warning(
                "%s: it was created before with another geometry; unlink "
                "it (stop livemon-daemon) to apply the config",
                mismatch,
            )
        self.geometry_mismatch = mismatch

    def _detach(self) -> None:
        # A spill belongs to its ring's epoch and this process's lane.
        if self._spills is not None:
            self._spills.close()
        for writer in (self._events, self._labels):
            if writer is not None:
                writer.close()
        self._events = self._labels = None
        if self._rings is not None:
            for ring in self._rings:
                ring.close()
            self._rings = None

    def _after_fork_in_child(self) -> None:
        # The child writes from its own lane; its labels are announced anew
        # so that nothing depends on records of the parent's lane.
        if os.getpid() == self._sink.pid:
            return  # already renewed
        # A thread of the parent may have held a lock at the fork: it does
        # not exist here, so the child's locks are new.
        self._reconnecting = threading.RLock()
        self._sink.renew_identity()
        self._label_cache.after_fork_in_child()
        self._said = set()  # the child tells its own troubles
        # The parent's spills were abandoned in this process by their own
        # at-fork hooks; the child spills from its own lane, when needed,
        # with new locks (another thread of the parent may have held one).
        if self._spills is not None:
            self._spills = self._spills.renewed()
        self._agents.after_fork_in_child()


_MONITORS: weakref.WeakSet[Monitor] = weakref.WeakSet()


def _renew_monitors_after_fork() -> None:
    for monitor in list(_MONITORS):
        monitor._after_fork_in_child()


# One hook for every Monitor of the process, registered once at import.
os.register_at_fork(after_in_child=_renew_monitors_after_fork)
