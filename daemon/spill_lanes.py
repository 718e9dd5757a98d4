"""
A spill lane's bookkeeping, shared by the replayers: its committed
high-water mark, the fsync that makes the commits durable, and unlinking
the segments wholly at or below the mark.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

from daemon.store import Store
from livemon.spill import SpillReader, spill_lane
from ringbuf import Batch

RETIRE_INTERVAL_S = 1.0  # segments sealed since: looked at this often
_HWM = "SELECT max(seq) FROM {table} WHERE epoch = ? AND lane = ?"

LaneKey = tuple[int, int]
"""A spill lane: (epoch, ring lane) of the ring its records spilled from."""


def committed_hwm(
    store: Store, epoch: int, lane: int, table: str = "events"
) -> int:
    """The highest spill seq committed for a ring lane into ``table``
    (whose rows carry the ring identity), -1 if none."""
    sql = _HWM.format(table=table)
    row = store.db.execute(sql, (epoch, spill_lane(lane))).fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def backlog_hwm(
    store: Store | None, epoch: int, lane: int, table: str = "events"
) -> int:
    """``committed_hwm`` for a backlog figure: -1 (every record counted
    as waiting) while the store is unavailable or cannot answer."""
    if store is None:
        return -1
    try:
        return committed_hwm(store, epoch, lane, table)
    except (sqlite3.Error, ValueError):
        return -1  # unknown: count every record as waiting


def first_records(batch: Batch, room: int) -> Batch:
    """The first ``room`` records of ``batch``."""
    if len(batch.records) <= room:
        return batch
    return batch._replace(records=batch.records[:room])


def make_durable(store: Store) -> None:
    """Fsync the database's WAL and file: call it before unlinking a
    segment whose records were committed.  With ``synchronous=NORMAL`` a
    commit is not on disk yet, and a segment unlinked after a commit that
    a power loss undoes would lose its records (they survive in it).

    Raises:
        OSError: the fsync failed: unlink nothing.
    """
    # The file SQLite writes: a database named through a symlink has its
    # WAL beside the file, not beside the link.
    for path in (store.file + "-wal", store.file):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # no WAL: checkpointed and synced already
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def durable_once(store: Store) -> Callable[[], None]:
    """A ``before_unlink`` for ``retire_lane``: ``make_durable(store)``,
    the first time it is called only (one fsync for a step's unlinks)."""
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            make_durable(store)
            done = True

    return once


def retire_lane(
    reader: SpillReader,
    key: LaneKey,
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
