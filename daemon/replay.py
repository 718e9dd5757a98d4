"""
Spill replay: the records producers spilled while their lanes were full,
committed into the store exactly once, then their segments unlinked.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from daemon.exceptions import DaemonError
from daemon.spill_lanes import (
    RETIRE_INTERVAL_S,
    LaneKey,
    backlog_hwm,
    committed_hwm,
    durable_once,
    first_records,
    retire_lane,
)
from daemon.store import Store
from livemon.exceptions import SpillConfigError
from livemon.record import LABEL_DTYPE, RECORD_DTYPE
from livemon.spill import SpillReader, spill_lane
from ringbuf import Batch

logger = logging.getLogger("livemon.daemon")

# A replay step commits up to STEP_BATCHES drain batches of events (the
# daemon passes STEP_BATCHES * batch_records) in one transaction.  The
# drain is bounded by what the ring holds, replay is not, and one commit
# for more records dirties each index page once for more of them (the
# drain's cost per record grows with the database, a large step's far
# less), besides spreading the fsync before unlinking and the directory
# scans.  At the default batch a step takes ~2 s; ring lanes hold ~16 s
# at 1,000 requests/s.
STEP_BATCHES = 10
DEFAULT_MAX_RECORDS = STEP_BATCHES * 20000
# Records a ``Store.write`` of a step takes: the rows built for an insert
# cost ~1.2 KB a record, so a step reads and writes in parts, all in its
# one transaction: its memory is one part's (~60 MB of rows), not all
# the step commits.
WRITE_RECORDS = 50_000


class SpillReplayer:
    """Moves spilled records into the store, exactly once, in seq order.

    A record spilled from ring lane ``l`` of epoch ``e`` under spill seq
    ``s`` is stored as ``(e, SPILL_LANE_BASE + l, s)``: spill seqs never
    meet the ring's.  Each step reads, per lane, the records above the
    lane's committed high-water mark (HWM), labels first, commits them in
    one transaction, and only then unlinks every segment wholly at or
    below the HWM.  The events HWM is the committed rows themselves
    (``max(seq)`` of the lane, answered by the identity index), so a
    crash anywhere replays nothing twice: a crash between commit and
    unlink finds the rows committed, and ``INSERT OR IGNORE`` covers the
    rest.  Labels are idempotent by id; their HWM is kept in memory only,
    so a restarted daemon replays them once more, harmlessly, as does a
    replayer whose store was opened anew (it may be a new file).

    Hook it into the drain loop *before* ``Drainer.step``: a label spilled
    before an event it names reached the ring is then committed no later
    than that event.

    Args:
        spill_dir: the spill root the producers write under.
        ring: the events ring's name (labels: ``<ring>.labels``).
        store: the store, or a callable returning the current one (say
            ``lambda: drainer.store``), None while it is unavailable.
        max_records: events a step commits when not told otherwise.

    Raises:
        SpillConfigError: ``max_records`` is not a positive int.
    """

    def __init__(
        self,
        spill_dir: str | os.PathLike[str],
        ring: str,
        store: Store | Callable[[], Store | None],
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.max_records = _check_max(max_records)
        self.spill_dir = os.fspath(spill_dir)
        self.events = SpillReader(self.spill_dir, ring, RECORD_DTYPE)
        self.labels = SpillReader(
            self.spill_dir, ring + ".labels", LABEL_DTYPE
        )
        self._store = store
        self._label_hwm: dict[LaneKey, int] = {}
        # The store the labels' HWM was committed through: a store opened
        # anew may be a new file (the old one deleted or replaced; inode
        # numbers are reused at once, so the file's identity cannot tell).
        self._label_store: weakref.ref[Store] | None = None
        self._retire_at = 0.0
        self._before_unlink: Callable[[], None] | None = None
        self.replayed = 0
        """Events committed from spill files by this replayer."""
        self.retired = 0
        """Segments unlinked after their last record was committed."""
        self.last_error: str | None = None

    @property
    def store(self) -> Store | None:
        """The store now (None while it is unavailable)."""
        store = self._store
        return store if isinstance(store, Store) else store()

    def step(self, max_records: int | None = None) -> int:
        """``replay_once``, turning trouble into a retry at the next step.

        Database trouble is left to the drain loop (it backs off and
        reopens the store); the records stay in their files meanwhile.

        Raises:
            SpillConfigError: ``max_records`` is not a positive int.
        """
        if max_records is not None:
            _check_max(max_records)
        try:
            moved = self.replay_once(max_records)
        except (sqlite3.Error, DaemonError, OSError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "spill replay failed (%s); the records stay in their "
                "spill files, retrying",
                self.last_error,
            )
            return 0
        self.last_error = None
        return moved

    def replay_once(self, max_records: int | None = None) -> int:
        """Commit up to ``max_records`` (default: the replayer's)
        spilled events, and the labels spilled meanwhile; return the
        events committed.

        Raises:
            SpillConfigError: ``max_records`` is not a positive int.
            sqlite3.Error, DaemonError: the store failed; nothing was
                retired, the records stay in their files.
            OSError: the spill directory cannot be read.
        """
        room = _check_max(
            self.max_records if max_records is None else max_records
        )
        store = self.store
        if store is None:
            return 0
        if self._label_store is None or self._label_store() is not store:
            self._label_hwm.clear()  # replayed again, harmlessly if known
            self._label_store = weakref.ref(store)
        label_batches = self._pending_labels(room)
        events = self._pending_events(store, room)
        first = next(events, None)  # no transaction for nothing
        event_lanes: set[LaneKey] = set()
        moved = 0
        if label_batches or first is not None:
            ahead = [] if first is None else [first]
            moved = self._commit(
                store,
                label_batches,
                itertools.chain(ahead, events),
                event_lanes,
            )
        self.replayed += moved  # committed, whatever retiring meets
        # The commits above, fsynced before this step's first unlink.
        self._before_unlink = durable_once(store)
        now = time.monotonic()
        if now >= self._retire_at:  # segments sealed since, or retained
            self._retire_at = now + RETIRE_INTERVAL_S
            self._retire_all(store)
        else:
            self._retire_labels({key for key, _ in label_batches})
            self._retire_events(store, event_lanes)
        return moved

    # -- reading ---------------------------------------------------------

    def _pending_labels(self, max_records: int) -> list[tuple[LaneKey, Batch]]:
        found: list[tuple[LaneKey, Batch]] = []
        room = max_records
        for key in self.labels.lanes():
            after = self._label_hwm.get(key, -1)
            for batch in self.labels.read(*key, after):
                if room <= 0:
                    return found
                batch = first_records(batch, room)
                room -= len(batch.records)
                found.append((key, batch))
        return found

    def _pending_events(
        self, store: Store, max_records: int
    ) -> Iterator[tuple[LaneKey, Batch]]:
        """Up to ``max_records`` events above their lanes' HWMs, in lane
        and seq order, read only as they are wanted: a step holds one
        write's part in memory, not all it commits."""
        room = max_records
        for key in self.events.lanes():
            epoch, lane = key
            # Read before this step writes the lane.
            after = committed_hwm(store, epoch, lane)
            for batch in self.events.read(epoch, lane, after):
                batch = first_records(batch, room)
                room -= len(batch.records)
                # Stored under the spill lane: its own seq space.
                yield key, batch._replace(lane=spill_lane(lane))
                if room <= 0:
                    return

    # -- committing ------------------------------------------------------

    def _commit(
        self,
        store: Store,
        label_batches: list[tuple[LaneKey, Batch]],
        events: Iterable[tuple[LaneKey, Batch]],
        event_lanes: set[LaneKey],
    ) -> int:
        """Write the labels, then the events in parts, in one transaction;
        add the events' lanes to ``event_lanes``; return events moved."""
        moved = inserted = 0

        def counted() -> Iterator[tuple[LaneKey, Batch]]:
            nonlocal moved
            for key, batch in events:
                event_lanes.add(key)
                moved += len(batch.records)
                yield key, batch

        # One transaction; the writes nest inside.  A COMMIT that fails
        # empties the store's list cache (``Store.atomic``).
        with store.atomic():
            if label_batches:  # before the events that name them
                store.write(0, [batch for _, batch in label_batches], [])
            for epoch, part in _parts(counted(), WRITE_RECORDS):
                inserted += store.write(epoch, [], part)
        # Committed: now the labels' HWM may move (events' is the rows).
        for key, batch in label_batches:
            hwm = self._label_hwm.get(key, -1)
            self._label_hwm[key] = max(hwm, batch.end_seq - 1)
        if inserted != moved:
            logger.info(
                "spill replay: %d of %d records were already stored",
                moved - inserted,
                moved,
            )
        return moved

    # -- retiring --------------------------------------------------------

    def _retire_all(self, store: Store) -> None:
        self._retire_labels(set(self.labels.lanes()))
        self._retire_events(store, set(self.events.lanes()))

    def _retire_labels(self, keys: set[LaneKey]) -> None:
        for key in keys:
            hwm = self._label_hwm.get(key, -1)
            self.retired += retire_lane(
                self.labels, key, hwm, self._before_unlink
            )

    def _retire_events(self, store: Store, keys: set[LaneKey]) -> None:
        for epoch, lane in keys:
            hwm = committed_hwm(store, epoch, lane)
            key = (epoch, lane)
            self.retired += retire_lane(
                self.events, key, hwm, self._before_unlink
            )

    # -- status ----------------------------------------------------------

    def backlog(self) -> dict[str, Any]:
        """What waits in the spill files, for status, top and health.

        Returns:
            ``records``, ``size_bytes``, ``segments``, ``oldest_age_s``
            (of the oldest record not yet committed) in all; the readers'
            ``bad_frames``, ``torn_frames``, ``bad_segments`` (records
            lost to damage, counted once); and ``lanes``: the same
            figures per ``tree`` (events, labels), ``epoch`` and ``lane``.
        """
        store = self.store
        now_ns = time.time_ns()
        lanes: list[dict[str, Any]] = []
        for tree, reader in (("labels", self.labels), ("events", self.events)):
            for epoch, lane in reader.lanes():
                if tree == "labels":
                    after = self._label_hwm.get((epoch, lane), -1)
                else:
                    after = backlog_hwm(store, epoch, lane)
                got = reader.backlog(epoch, lane, after)
                if not got.segments:
                    continue  # a lane dir left empty by retire
                lanes.append(
                    {
                        "tree": tree,
                        "epoch": epoch,
                        "lane": lane,
                        "records": got.records,
                        "size_bytes": got.size_bytes,
                        "segments": got.segments,
                        "oldest_age_s": round(got.oldest_age_s(now_ns), 3),
                    }
                )
        readers = (self.labels, self.events)
        return {
            "records": sum(lane["records"] for lane in lanes),
            "size_bytes": sum(lane["size_bytes"] for lane in lanes),
            "segments": sum(lane["segments"] for lane in lanes),
            "oldest_age_s": max(
                (lane["oldest_age_s"] for lane in lanes), default=0.0
            ),
            "bad_frames": sum(r.bad_frames for r in readers),
            "torn_frames": sum(r.torn_frames for r in readers),
            "bad_segments": sum(r.bad_segments for r in readers),
            "lanes": lanes,
        }


def _check_max(max_records: object) -> int:
    """``max_records`` if it is a positive int.

    Raises:
        SpillConfigError: it is not.
    """
    if (
        not isinstance(max_records, int)
        or isinstance(max_records, bool)
        or max_records < 1
    ):
        raise SpillConfigError(
            f"max_records must be a positive int (records a replay step "
            f"commits), got {max_records!r}"
        )
    return max_records


def _parts(
    events: Iterable[tuple[LaneKey, Batch]], records: int
) -> Iterator[tuple[int, list[Batch]]]:
    """``(epoch, batches)`` of one epoch and about ``records`` records
    each (whole batches: a segment's at most), in order."""
    part: list[Batch] = []
    part_epoch = count = 0
    for (epoch, _), batch in events:
        if part and (epoch != part_epoch or count >= records):
            yield part_epoch, part
            part, count = [], 0
        part_epoch = epoch
        part.append(batch)
        count += len(batch.records)
    if part:
        yield part_epoch, part
