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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from daemon.exceptions import DaemonError
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
RETIRE_INTERVAL_S = 1.0  # segments sealed since: looked at this often
_HWM = "SELECT max(seq) FROM {table} WHERE epoch = ? AND lane = ?"

_Lane = tuple[int, int]  # (epoch, ring lane)


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
    so a restarted daemon replays them once more, harmlessly.

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
        self._label_hwm: dict[_Lane, int] = {}
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
        label_batches = self._pending_labels(room)
        events = self._pending_events(store, room)
        first = next(events, None)  # no transaction for nothing
        event_lanes: set[_Lane] = set()
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

    def _pending_labels(self, max_records: int) -> list[tuple[_Lane, Batch]]:
        found: list[tuple[_Lane, Batch]] = []
        room = max_records
        for key in self.labels.lanes():
            after = self._label_hwm.get(key, -1)
            for batch in self.labels.read(*key, after):
                if room <= 0:
                    return found
                batch = _head(batch, room)
                room -= len(batch.records)
                found.append((key, batch))
        return found

    def _pending_events(
        self, store: Store, max_records: int
    ) -> Iterator[tuple[_Lane, Batch]]:
        """Up to ``max_records`` events above their lanes' HWMs, in lane
        and seq order, read only as they are wanted: a step holds one
        write's part in memory, not all it commits."""
        room = max_records
        for key in self.events.lanes():
            epoch, lane = key
            after = _hwm(store, epoch, lane)  # before this step writes it
            for batch in self.events.read(epoch, lane, after):
                batch = _head(batch, room)
                room -= len(batch.records)
                # Stored under the spill lane: its own seq space.
                yield key, batch._replace(lane=spill_lane(lane))
                if room <= 0:
                    return

    # -- committing ------------------------------------------------------

    def _commit(
        self,
        store: Store,
        label_batches: list[tuple[_Lane, Batch]],
        events: Iterable[tuple[_Lane, Batch]],
        event_lanes: set[_Lane],
    ) -> int:
        """Write the labels, then the events in parts, in one transaction;
        add the events' lanes to ``event_lanes``; return events moved."""
        moved = inserted = 0

        def counted() -> Iterator[tuple[_Lane, Batch]]:
            nonlocal moved
            for key, batch in events:
                event_lanes.add(key)
                moved += len(batch.records)
                yield key, batch

        with store.atomic():  # one transaction; the writes nest inside
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

    def _retire_labels(self, keys: set[_Lane]) -> None:
        for key in keys:
            hwm = self._label_hwm.get(key, -1)
            self.retired += _retire(self.labels, key, hwm, self._before_unlink)

    def _retire_events(self, store: Store, keys: set[_Lane]) -> None:
        for epoch, lane in keys:
            hwm = _hwm(store, epoch, lane)
            key = (epoch, lane)
            self.retired += _retire(self.events, key, hwm, self._before_unlink)

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
                    after = _hwm_or_none(store, epoch, lane)
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


def make_durable(store: Store) -> None:
    """Fsync the database's WAL and file: call it before unlinking a
    segment whose records were committed.  With ``synchronous=NORMAL`` a
    commit is not on disk yet, and a segment unlinked after a commit that
    a power loss undoes would lose its records (they survive in it).

    Raises:
        OSError: the fsync failed: unlink nothing.
    """
    for path in (store.path + "-wal", store.path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # no WAL: checkpointed and synced already
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def durable_once(store: Store) -> Callable[[], None]:
    """A ``before_unlink`` for ``_retire``: ``make_durable(store)``, the
    first time it is called only (one fsync for a step's unlinks)."""
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            make_durable(store)
            done = True

    return once


def _hwm(store: Store, epoch: int, lane: int, table: str = "events") -> int:
    """The highest spill seq committed for a ring lane into ``table``
    (whose rows carry the ring identity), -1 if none."""
    sql = _HWM.format(table=table)
    row = store.db.execute(sql, (epoch, spill_lane(lane))).fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def _hwm_or_none(store: Store | None, epoch: int, lane: int) -> int:
    if store is None:
        return -1
    try:
        return _hwm(store, epoch, lane)
    except (sqlite3.Error, ValueError):
        return -1  # unknown: count every record as waiting


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
    events: Iterable[tuple[_Lane, Batch]], records: int
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


def _head(batch: Batch, room: int) -> Batch:
    """The first ``room`` records of ``batch``."""
    if len(batch.records) <= room:
        return batch
    return batch._replace(records=batch.records[:room])


def _retire(
    reader: SpillReader,
    key: _Lane,
    hwm: int,
    before_unlink: Callable[[], None] | None = None,
) -> int:
    """Unlink a lane's segments wholly at or below ``hwm``; count them.
    Once none is left, remove the lane's directory (and its epoch's).

    ``before_unlink`` runs before the first unlink (``make_durable``);
    the unlinks are made durable together, one directory fsync a lane.
    A segment starting above ``hwm`` holds nothing committed, so it is
    read (by ``retire``) only if its header says it has no frames: a
    producer killed right after making it leaves such a one behind.

    The directory goes only when empty, and a live producer's is not:
    while it spills, its segment is in it (sealed ones stay until
    replayed), and ``rmdir`` removes only empty directories.  A producer
    that spills again later, or had just made the directory for its next
    segment, makes it again (``open_segment`` retries once).
    """
    retired = 0
    segments = reader.segments(*key)
    for segment in segments:
        if segment.first_seq > hwm and reader.published(segment):
            continue  # records to replay first
        if reader.retire(segment, hwm, before_unlink, sync_dir=False):
            retired += 1
    if retired:  # one directory fsync for the lane's unlinks
        reader.sync_lane(*key)
    if retired == len(segments):
        reader.prune(*key)
    return retired
