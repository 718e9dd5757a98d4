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
from livemon import ipc, spill
from livemon import record as rec
from livemon.config import Config, load_config
from livemon.context import RequestContext
from livemon.exceptions import MonitoringUnavailable
from livemon.labels import LabelCache
from livemon.sink import Counters, Sink

__all__ = ["Counters", "Monitor"]

logger = logging.getLogger("livemon")

_MAX_CACHED_LABELS = 100_000
_RING_FAILURES = (ringbuf.RingError, ValueError, OSError)
_SPILL_FAILURES = (spill.SpillConfigError, spill.SpillDtypeError, OSError)
_STORED = spill.SpillStatus.STORED
# Which counter a spill refusal adds to, beside ``dropped``.
_SPILL_DROPS = {
    spill.SpillStatus.SPILL_CAP: "dropped_spill_cap",
    spill.SpillStatus.DISK_FULL: "dropped_disk_full",
    spill.SpillStatus.IO_ERROR: "dropped_io_error",
    spill.SpillStatus.REJECTED: "dropped_io_error",
}
SPILL_IDLE_S = 1.0
"""Seconds of ring puts succeeding again before the spill is sealed."""
# SpillWriter keyword, and the Config key a later Config will carry for
# it.  Read with getattr so this Monitor works with today's Config.
_SPILL_OPTIONS = (
    ("segment_bytes", "spill_segment_bytes"),
    ("lane_cap_bytes", "spill_lane_cap_bytes"),
    ("total_cap_bytes", "spill_total_cap_bytes"),
    ("min_free_bytes", "spill_min_free_bytes"),
    ("sync_interval_ms", "spill_sync_interval_ms"),
)


def spill_enabled(config: Config) -> bool:
    """Whether a full lane spills (``config.spill``; off until set)."""
    return bool(getattr(config, "spill", False))


def spill_dir(config: Config) -> str:
    """The spill root: ``config.spill_dir``, else beside the database."""
    return getattr(config, "spill_dir", "") or spill.default_spill_dir(
        config.db
    )


def spill_options(config: Config) -> dict[str, Any]:
    """``SpillWriter`` keywords from ``config`` (its defaults if unset)."""
    options: dict[str, Any] = {
        keyword: getattr(config, key)
        for keyword, key in _SPILL_OPTIONS
        if getattr(config, key, None) is not None
    }
    if options.get("sync_interval_ms") == 0:
        options["sync_interval_ms"] = None  # 0: writeback by the kernel
    options["mode"] = config.mode
    return options


class Monitor:
    """Records requests of this process into the shared ring.

    When this process's lane is full (no daemon draining, or a burst) and
    ``config.spill`` is set, the record goes to this lane's spill files
    under ``spill_dir(config)`` instead (``counters.spilled``), and so do
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
    # The spills of this process's events and labels lanes, made when a
    # lane is first found full; None while not spilling.
    _events_spill: spill.LaneSpill | None = None
    _labels_spill: spill.LaneSpill | None = None
    _spilling = False  # either spill is open
    _spilled_at = 0.0  # monotonic time of the last spilled put
    _spill_retry_at = 0.0  # after a spill could not be opened

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
        self._label_cache = LabelCache(
            self._put_label, self.counters, _MAX_CACHED_LABELS
        )
        # The same dict object: _write checks it without a lookup chain.
        self._pending_labels = self._label_cache.pending
        self._sink = Sink(
            strict=strict,
            counters=self.counters,
            labels=self._label_cache,
            write=self._write,
        )
        self._retry_at = 0.0
        # Held only on the slow paths (connect, follow, close): two
        # threads of one process never claim two lanes or close a writer
        # under each other's put.
        self._reconnecting = threading.RLock()
        self._spill_on = spill_enabled(self.config)
        # A SpillWriter takes one put at a time (the ring's writer locks
        # its own); only the spilling path pays for this lock.
        self._spill_lock = threading.Lock()
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
        """Return the label id of ``text``, announcing it once per process."""
        return self._label_cache.intern(text)

    def close(self) -> None:
        """Give back this process's lanes and detach, for good. Idempotent.

        Requests ended later are counted in ``counters.unavailable``.
        """
        with self._reconnecting:
            self._closed = True
            self._detach()

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
            if self._spilling:  # one load: the only cost when not full
                self._settle_spills()
            return True
        if stale:
            return self._follow(packed, events)
        return self._spill_event(packed)

    def _spill_event(self, packed: bytes) -> bool:
        """Spill a record the full lane refused; count it if that fails."""
        if self._spill_on:
            with self._spill_lock:
                lane_spill = self._events_spill
                if lane_spill is None:
                    lane_spill = self._events_spill = self._open_spill(0)
                status = (
                    spill.SpillStatus.IO_ERROR
                    if lane_spill is None
                    else lane_spill.put(packed)
                )
            if status is _STORED:
                self.counters.spilled += 1
                self._spilled_at = time.monotonic()
                self._spilling = True
                return True
            reason = _SPILL_DROPS[status]
            setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        return self._lost(
            "dropped",
            f"ring {self.config.ring!r} lane is full: is livemon-daemon "
            "running? (or raise capacity_records)",
        )

    def _open_spill(self, which: int) -> spill.LaneSpill | None:
        """Open the spill of the events (0) or labels (1) lane, or None.

        Opening reads the lane's spill directory once; after a failure it
        is tried again only after ``retry_interval_s``.
        """
        rings = self._rings
        writer = (self._events, self._labels)[which]
        if rings is None or writer is None or self._closed:
            return None
        now = time.monotonic()
        if now < self._spill_retry_at:
            return None
        ring = rings[which]
        try:
            lane = writer.lane
            if lane is None:
                return None
            root = spill_dir(self.config)
            _make_parent(root, self.config.mode)
            return spill.LaneSpill.open(
                root,
                ring.name,
                ring.epoch,
                lane,
                ring.dtype,
                **spill_options(self.config),
            )
        except _SPILL_FAILURES as exc:
            self._spill_retry_at = now + self.retry_interval_s
            logger.warning(
                "cannot spill ring %r lane (records are dropped): %s",
                ring.name,
                exc,
            )
            return None

    def _settle_spills(self) -> None:
        """While the ring takes records again: sync, then seal the spills.

        The daemon retires only sealed segments; sealing after
        ``SPILL_IDLE_S`` rather than at once keeps a lane that is full on
        and off from making a segment each time.
        """
        if time.monotonic() - self._spilled_at >= SPILL_IDLE_S:
            self._close_spills()
            return
        with self._spill_lock:
            for lane_spill in (self._events_spill, self._labels_spill):
                if lane_spill is not None:
                    lane_spill.sync_if_due()

    def _close_spills(self) -> None:
        with self._spill_lock:
            for lane_spill in (self._events_spill, self._labels_spill):
                if lane_spill is not None:
                    lane_spill.close()
            self._events_spill = self._labels_spill = None
            self._spilling = False

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
            if labels.stale or not self._spill_on:
                return False
        except _RING_FAILURES:
            return False
        # The labels lane is full: spill the label so that it survives an
        # outage longer than the held labels last (see LabelCache).
        with self._spill_lock:
            lane_spill = self._labels_spill
            if lane_spill is None:
                lane_spill = self._labels_spill = self._open_spill(1)
            if lane_spill is None or lane_spill.put(record) is not _STORED:
                return False  # held by the label cache, tried again later
        self.counters.labels_spilled += 1
        self._spilled_at = time.monotonic()
        self._spilling = True
        return True

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
        self._retry_at = time.monotonic() + self.retry_interval_s

    def _check_geometry(
        self, rings: tuple[ringbuf.Ring, ringbuf.Ring]
    ) -> None:
        config = self.config
        wanted = (
            (config.lanes, config.capacity_records),
            (config.lanes, config.label_capacity_records),
        )
        found = [
            f"ring {ring.name!r} has {ring.lanes} lanes of "
            f"{ring.capacity_records} records, the config says {lanes} of "
            f"{capacity}"
            for ring, (lanes, capacity) in zip(rings, wanted, strict=True)
            if (ring.lanes, ring.capacity_records) != (lanes, capacity)
        ]
        mismatch = "; ".join(found) or None
        if mismatch is not None and mismatch != self.geometry_mismatch:
            logger.warning(
                "%s: it was created before with another geometry; unlink "
                "it (stop livemon-daemon) to apply the config",
                mismatch,
            )
        self.geometry_mismatch = mismatch

    def _detach(self) -> None:
        # A spill belongs to its ring's epoch and this process's lane.
        self._close_spills()
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
        self._sink.renew_identity()
        self._label_cache.clear()
        # The parent's spills were abandoned in this process by their own
        # at-fork hooks; the child spills from its own lane, when needed.
        # A new lock: another thread of the parent may have held the old.
        self._spill_lock = threading.Lock()
        self._events_spill = self._labels_spill = None
        self._spilling = False


def _make_parent(path: str, mode: int) -> None:
    """Make the spill root's parent (the database's directory, by default)
    as the daemon would, should coordinators spill before it ever ran."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700 | (mode & 0o070), exist_ok=True)


_MONITORS: weakref.WeakSet[Monitor] = weakref.WeakSet()


def _renew_monitors_after_fork() -> None:
    for monitor in list(_MONITORS):
        monitor._after_fork_in_child()


# One hook for every Monitor of the process, registered once at import.
os.register_at_fork(after_in_child=_renew_monitors_after_fork)
