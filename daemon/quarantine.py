"""
What the drainer sets aside instead of storing: lanes whose cursors make
no sense, and records that are garbage or that the store cannot turn into
rows, counted and kept in a JSON-lines file beside the database.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

import ringbuf
from livemon.record import MAX_TEXT_BYTES

logger = logging.getLogger("livemon.daemon")

MAX_FILE_BYTES = 16 * 2**20


class Quarantine:
    """Counts and keeps what must not reach the database.

    A lane is quarantined while its head is behind its tail, or more than
    a lane's capacity ahead of it (a damaged or foreign cursor): nothing
    of it is read, every other lane goes on.  It is released as soon as
    its cursors make sense again.  A record is quarantined once, then
    consumed like any other, so one bad record never holds up its lane.

    Args:
        path: the JSON-lines file records are appended to (at most
            ``MAX_FILE_BYTES``; beyond that they are only counted).
        mode: its permission bits.
    """

    def __init__(self, path: str, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode
        self.records = 0
        self.lanes: dict[str, dict[int, str]] = {}

    def lane(self, ring: str, lane: int, head: int, tail: int) -> None:
        """Note that ``lane`` of ``ring`` has cursors out of range."""
        bad = self.lanes.setdefault(ring, {})
        if lane not in bad:
            bad[lane] = f"head {head}, tail {tail}"
            logger.error(
                "ring %r lane %d quarantined: head %d, tail %d make no "
                "sense (a damaged or foreign cursor); its records are not "
                "read, the other lanes go on",
                ring,
                lane,
                head,
                tail,
            )

    def release(self, ring: str, lane: int) -> None:
        """The lane's cursors make sense again: read it again."""
        bad = self.lanes.get(ring)
        if bad and bad.pop(lane, None) is not None:
            logger.warning("ring %r lane %d: cursors sane again", ring, lane)

    def lane_count(self) -> int:
        """How many lanes are quarantined now, over every ring."""
        return sum(len(bad) for bad in self.lanes.values())

    def describe(self) -> list[str]:
        """``ring:lane (why)`` for every quarantined lane."""
        return [
            f"{ring}:{lane} ({why})"
            for ring, bad in sorted(self.lanes.items())
            for lane, why in sorted(bad.items())
        ]

    def screen(
        self,
        ring: str,
        batches: list[ringbuf.Batch],
        sane: Callable[[npt.NDArray[np.void]], npt.NDArray[np.bool_]],
    ) -> list[ringbuf.Batch]:
        """The batches without the records that cannot be real.

        What is left of a batch is split into runs of consecutive seqs,
        so each stored record keeps its identity.
        """
        kept = []
        for batch in batches:
            good = sane(batch.records)
            if good.all():
                kept.append(batch)
                continue
            edges = np.flatnonzero(np.diff(good.astype(np.int8))) + 1
            bounds = [0, *edges.tolist(), len(good)]
            for low, high in itertools.pairwise(bounds):
                part = ringbuf.Batch(
                    batch.lane, batch.first_seq + low, batch.records[low:high]
                )
                if good[low]:
                    kept.append(part)
                else:
                    self.add(
                        ring,
                        part.lane,
                        part.first_seq,
                        part.records,
                        "not a record a producer writes (all zero bytes, "
                        "or a label longer than its slot)",
                    )
        return kept

    def add(
        self,
        ring: str,
        lane: int,
        first_seq: int,
        records: npt.NDArray[np.void],
        reason: str,
    ) -> None:
        """Set ``records`` (consecutive seqs from ``first_seq``) aside."""
        self.records += len(records)
        logger.error(
            "quarantined %d record(s) of ring %r lane %d from seq %d: %s",
            len(records),
            ring,
            lane,
            first_seq,
            reason,
        )
        try:
            self._keep(ring, lane, first_seq, records, reason)
        except OSError as exc:  # full or read-only: counting is enough
            logger.warning("cannot write %s: %s", self.path, exc)

    def _keep(
        self,
        ring: str,
        lane: int,
        first_seq: int,
        records: npt.NDArray[np.void],
        reason: str,
    ) -> None:
        fd = _open_own(self.path, self.mode)
        with os.fdopen(fd, "w") as file:
            if os.fstat(fd).st_size <= MAX_FILE_BYTES:
                file.writelines(_lines(ring, lane, first_seq, records, reason))


def _lines(
    ring: str,
    lane: int,
    first_seq: int,
    records: npt.NDArray[np.void],
    reason: str,
) -> list[str]:
    """One JSON line per record set aside, its bytes in hex."""
    raw = np.ascontiguousarray(records).view(
        np.dtype(f"V{records.dtype.itemsize}")
    )
    return [
        json.dumps(
            {
                "at": time.time(),
                "ring": ring,
                "lane": lane,
                "seq": first_seq + i,
                "reason": reason,
                "record_hex": bytes(item).hex(),
            }
        )
        + "\n"
        for i, item in enumerate(raw.tolist())
    ]


def _open_own(path: str, mode: int) -> int:
    """Open the quarantine file to append, only if it is a regular file
    (made if missing): a symlink planted in its place is not followed (the
    daemon may write as root), and a FIFO nobody reads, which would block
    the drain loop in ``open``, is refused at once.

    Raises:
        OSError: it is a symlink, a FIFO, a directory, or cannot be
            opened.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


def sane_events(records: npt.NDArray[np.void]) -> npt.NDArray[np.bool_]:
    """Which ``RECORD_DTYPE`` records a producer can have written."""
    # A slot no producer ever wrote is all zero bytes (a lane whose head
    # was pushed past what was written reads such slots).
    raw = np.ascontiguousarray(records).view(np.uint8)
    shape = (len(records), records.dtype.itemsize)
    return np.asarray(raw.reshape(shape).any(axis=1), np.bool_)


def sane_labels(records: npt.NDArray[np.void]) -> npt.NDArray[np.bool_]:
    """Which ``LABEL_DTYPE`` records have a length that fits their slot."""
    good: npt.NDArray[np.bool_] = records["length"] <= MAX_TEXT_BYTES
    return good
