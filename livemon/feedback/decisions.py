"""
The standing feedback decisions of one host, in a small shared-memory
segment ``<ring>.verdicts``: the leader publishes them under a seqlock,
every coordinator copies them out only when they changed.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

from livemon.config import Config
from livemon.exceptions import LivemonError
from livemon.feedback.rules import FeedbackState
from ringbuf import _layout, _shm
from ringbuf.exceptions import (
    RingClosed,
    RingCorrupt,
    RingExists,
    RingNotFound,
)

VERDICTS_SUFFIX = ".verdicts"
MAGIC = 0x5354_4349_4452_4556  # b"VERDICTS" read as little-endian u64
VERSION = 1
HEADER_BYTES = 128  # _shm.attach waits until a segment is at least this
MAX_ENTRIES = 4096
_ENTRY = struct.Struct("<Bxxxxxxxqd")  # kind, pad, subject, value: 24 bytes
SIZE_BYTES = HEADER_BYTES + MAX_ENTRIES * _ENTRY.size

# Header words (u64, little-endian).
W_MAGIC, W_VERSION, W_SEQ, W_COUNT, W_CRC = 0, 1, 2, 3, 4
W_LEADER_PID, W_GENERATION, W_HEARTBEAT_NS = 5, 6, 7

_MULTIPLIER, _THRESHOLD, _CAPPED, _ALERT = 1, 2, 3, 4
_READ_ATTEMPTS = 200
_ALERT_TEXT = "quality regression"


class TooManyDecisions(LivemonError, ValueError):
    """More standing decisions than the segment holds (``MAX_ENTRIES``)."""


def verdicts_name(config: Config) -> str:
    """The segment's name: beside the rings, ``<ring>.verdicts``."""
    return config.ring + VERDICTS_SUFFIX


class Board:
    """One process's view of the host's decisions segment.

    Layout: a 128-byte header of u64 words (magic, version, ``seq``,
    entry count, CRC-32 of the entries, leader pid, leader generation,
    leader heartbeat in ns), then up to ``MAX_ENTRIES`` entries of 24
    bytes: kind (u8: 1 multiplier, 2 threshold, 3 capped, 4 alert),
    7 pad bytes, subject (i64 label id), value (f64).

    The seqlock: the writer makes ``seq`` odd, writes the entries, the
    count and the CRC, then makes it even.  A reader copies them between
    two reads of ``seq`` and keeps the copy only if both were the same
    even number and the CRC matches, so it never returns a torn read;
    a writer that died mid-write leaves ``seq`` odd, and readers keep
    their last good copy until the next leader rewrites it.
    """

    def __init__(self, segment: _shm.Segment) -> None:
        self._segment = segment
        self.seen_seq = -1  # the seq of the last copy this process took

    @classmethod
    def open(cls, config: Config, wait_s: float = 2.0) -> Board:
        """Attach to the host's segment, creating it if it is missing.

        Args:
            config: names the segment, its mode and group.
            wait_s: how long a segment still empty or without its magic
                may be a creator's, still writing it (0 after a failed
                attempt: a segment that was bad then is not being made).

        Raises:
            ringbuf.RingUntrusted: the segment may be another user's.
            ringbuf.RingCorrupt: a segment of that name is not ours.
            OSError: shared memory cannot be opened.
        """
        name = verdicts_name(config)
        _layout.validate_name(name)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                segment = _shm.attach(name, deadline, config.gid)
                break
            except RingNotFound:
                pass
            try:
                segment = _shm.create(
                    name, SIZE_BYTES, config.mode, config.gid
                )
            except RingExists:
                continue  # another process created it first: attach
            words = segment.words
            assert words is not None
            words[W_VERSION] = VERSION
            # Magic last: an attacher that sees it sees the version too.
            words[W_MAGIC] = MAGIC
            break
        board = cls(segment)
        board._check(name, min(wait_s, 1.0))
        return board

    def _check(self, name: str, wait_s: float) -> None:
        words = self._words()
        # A creator that has not yet written the magic: give it a moment.
        deadline = time.monotonic() + wait_s
        while words[W_MAGIC] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        if (
            words[W_MAGIC] != MAGIC
            or words[W_VERSION] != VERSION
            or self._segment.size_bytes < SIZE_BYTES
        ):
            self.close()
            raise RingCorrupt(
                f"shared memory {name!r} is not a livemon decisions segment "
                f"of version {VERSION}: stop the coordinators and remove it "
                f"(rm {_layout.segment_path(name)})"
            )

    def _words(self) -> memoryview:
        words = self._segment.words
        if words is None:
            raise RingClosed("the decisions segment was closed")
        return words

    @property
    def seq(self) -> int:
        """The seqlock counter: changes whenever decisions are published."""
        return int(self._words()[W_SEQ])

    @property
    def leader(self) -> tuple[int, int, int]:
        """(pid, generation, heartbeat ns) of the last leader to publish."""
        w = self._words()
        return (
            int(w[W_LEADER_PID]),
            int(w[W_GENERATION]),
            int(w[W_HEARTBEAT_NS]),
        )

    def changed(self) -> bool:
        """Whether decisions were published since this process's last copy.

        One load: what every coordinator pays per check.
        """
        return int(self._words()[W_SEQ]) != self.seen_seq

    def publish(self, state: FeedbackState) -> None:
        """Write ``state`` as the host's standing decisions (leader only).

        Raises:
            TooManyDecisions: more than ``MAX_ENTRIES`` decisions.
            TypeError: ``state`` is not a ``FeedbackState``.
        """
        if not isinstance(state, FeedbackState):
            raise TypeError(
                f"publish takes a FeedbackState, not {type(state).__name__}"
            )
        payload = _pack(state)
        w = self._words()
        buf = self._segment.buf
        assert buf is not None
        seq = int(w[W_SEQ])
        if seq % 2:  # a writer died mid-write: start over from even
            seq += 1
        # Each store is one aligned 8-byte store (memoryview "Q"), and
        # x86-64 keeps store->store order: a reader that sees the even
        # seq written last sees every byte written before it.
        w[W_SEQ] = seq + 1
        buf[HEADER_BYTES : HEADER_BYTES + len(payload)] = payload
        w[W_COUNT] = len(payload) // _ENTRY.size
        w[W_CRC] = zlib.crc32(payload)
        w[W_SEQ] = seq + 2
        self.seen_seq = seq + 2

    def beat(self, generation: int) -> None:
        """Record the leader's pid, generation and the time (no seqlock:
        three independent words, each written whole)."""
        w = self._words()
        w[W_LEADER_PID] = os.getpid()
        w[W_GENERATION] = generation
        w[W_HEARTBEAT_NS] = time.time_ns()

    def read(self) -> FeedbackState | None:
        """A consistent copy of the decisions; None if none could be had.

        None when no decision was ever published, or a writer kept the
        segment inconsistent for every attempt (it died mid-write): keep
        the previous copy then.
        """
        w = self._words()
        buf = self._segment.buf
        assert buf is not None
        for _ in range(_READ_ATTEMPTS):
            before = int(w[W_SEQ])
            if before == 0:
                return None
            if before % 2:
                time.sleep(0)  # a write in progress: let it finish
                continue
            count = min(int(w[W_COUNT]), MAX_ENTRIES)
            crc = int(w[W_CRC])
            payload = bytes(
                buf[HEADER_BYTES : HEADER_BYTES + count * _ENTRY.size]
            )
            # x86-64 keeps load->load order: the copy above happened
            # before this second read of seq.
            if int(w[W_SEQ]) != before or zlib.crc32(payload) != crc:
                continue
            self.seen_seq = before
            return _unpack(payload)
        return None

    def close(self) -> None:
        """Unmap this process's view (the segment stays). Idempotent."""
        self._segment.close()


def _pack(state: FeedbackState) -> bytes:
    entries = [
        *((_MULTIPLIER, s, v) for s, v in sorted(state.multipliers.items())),
        *((_THRESHOLD, s, v) for s, v in sorted(state.thresholds.items())),
        *((_CAPPED, s, 1.0) for s in sorted(state.capped)),
        *((_ALERT, s, 1.0) for s in sorted(state.alerts)),
    ]
    if len(entries) > MAX_ENTRIES:
        raise TooManyDecisions(
            f"{len(entries)} standing decisions, the segment holds "
            f"{MAX_ENTRIES}: fewer agents and categories, or a newer livemon"
        )
    return b"".join(_ENTRY.pack(*entry) for entry in entries)


def _unpack(payload: bytes) -> FeedbackState:
    state = FeedbackState()
    for kind, subject, value in _ENTRY.iter_unpack(payload):
        if kind == _MULTIPLIER:
            state.multipliers[subject] = value
        elif kind == _THRESHOLD:
            state.thresholds[subject] = value
        elif kind == _CAPPED:
            state.capped.add(subject)
        elif kind == _ALERT:
            state.alerts[subject] = _ALERT_TEXT
    return state
