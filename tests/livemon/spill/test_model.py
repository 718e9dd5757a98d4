"""
A Hypothesis state machine of spilling: write, sync, rotate, close, crash
(possibly cutting the unsynced tail at a random byte, as a power failure
may), corrupt one frame, and replay by HWM as the daemon does.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)

from livemon.spill import SpillReader, SpillStatus, SpillWriter, _format

SMALL = np.dtype([("seq", "<u8"), ("value", "<f8")])
FRAME = _format.frame_bytes_for(SMALL.itemsize)
FRAMES_PER_SEGMENT = 5
RING, EPOCH, LANE = "model", 7, 2


class SpillModel(RuleBasedStateMachine):
    """The files against a model: which seqs are stored, where, and lost.

    Replayed seqs must be exactly the stored ones above the HWM, minus
    those the model destroyed, in order and never twice; every destroyed
    record is counted by the reader exactly once.
    """

    @initialize()
    def start(self) -> None:
        """A fresh spill directory, no writer, one long-lived reader."""
        self.dir = tempfile.mkdtemp(prefix="lmspill-")
        self.writer: SpillWriter | None = None
        self.reader = SpillReader(self.dir, RING, SMALL)
        self.next_seq = 0
        self.where: dict[int, tuple[str, int]] = {}  # seq: file, position
        self.synced: dict[str, int] = {}  # file: frames safe from power loss
        self.lost: set[int] = set()
        self.hwm = -1
        self.replayed: list[int] = []

    def teardown(self) -> None:
        """Let go of the writer and remove the directory."""
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir)

    # -- the producer ----------------------------------------------------

    def _open(self) -> SpillWriter:
        if self.writer is None:
            self.writer = SpillWriter(
                self.dir,
                RING,
                EPOCH,
                LANE,
                SMALL,
                segment_bytes=_format.DATA_OFFSET + FRAMES_PER_SEGMENT * FRAME,
                min_free_bytes=0,
                sync_interval_ms=None,
            )
        return self.writer

    @rule(count=st.integers(1, 12), gap=st.integers(0, 3))
    def write(self, count: int, gap: int) -> None:
        """Put ``count`` records; the first may skip seqs (ring took them)."""
        writer = self._open()
        self.next_seq += gap
        for _ in range(count):
            seq = self.next_seq
            before = writer.segment_path
            record = np.array([(seq, seq / 2)], SMALL)[0]
            assert writer.put(seq, record.tobytes()) is SpillStatus.STORED
            if before is not None and writer.segment_path != before:
                self.synced[before] = FRAMES_PER_SEGMENT  # rolled: fsynced
            assert writer.segment_path is not None
            self.where[seq] = (writer.segment_path, writer.segment_frames - 1)
            self.synced.setdefault(writer.segment_path, 0)
            self.next_seq += 1

    @precondition(lambda self: self.writer is not None)
    @rule()
    def rotate(self) -> None:
        """Fill the current segment and start the next."""
        assert self.writer is not None
        self.write(FRAMES_PER_SEGMENT - self.writer.segment_frames + 1, 0)

    @precondition(lambda self: self.writer is not None)
    @rule()
    def sync(self) -> None:
        """Msync: the current segment's frames survive a power failure."""
        assert self.writer is not None
        assert self.writer.sync()
        if self.writer.segment_path is not None:
            self.synced[self.writer.segment_path] = self.writer.segment_frames

    @precondition(lambda self: self.writer is not None)
    @rule()
    def close(self) -> None:
        """Close: sealed, fsynced, the unused tail trimmed."""
        assert self.writer is not None
        path, frames = self.writer.segment_path, self.writer.segment_frames
        self.writer.close()
        self.writer = None
        if path is not None:
            self.synced[path] = frames

    @precondition(lambda self: self.writer is not None)
    @rule(power_loss=st.booleans(), data=st.data())
    def crash(self, power_loss: bool, data: st.DataObject) -> None:
        """Drop the writer unclosed; a power loss may cut unsynced bytes."""
        assert self.writer is not None
        path = self.writer.segment_path
        self.writer._abandon()
        self.writer = None
        if path is None or not power_loss:
            return
        low = _format.DATA_OFFSET + self.synced[path] * FRAME
        cut = data.draw(st.integers(low, os.path.getsize(path)), label="cut")
        os.truncate(path, cut)
        for seq, (where, position) in self.where.items():
            end = _format.DATA_OFFSET + (position + 1) * FRAME
            # Records already committed are safe in the database.
            if where == path and end > cut and seq > self.hwm:
                self.lost.add(seq)

    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        """Flip one bit of one stored, uncommitted frame: one record lost."""
        candidates = sorted(
            s for s in self.where if s > self.hwm and s not in self.lost
        )
        if not candidates:
            return
        seq = data.draw(st.sampled_from(candidates), label="victim")
        bit = data.draw(st.integers(0, FRAME * 8 - 1), label="bit")
        path, position = self.where[seq]
        offset = _format.DATA_OFFSET + position * FRAME + bit // 8
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << bit % 8)]))
        self.lost.add(seq)

    # -- the daemon ------------------------------------------------------

    @rule(retire=st.booleans())
    def replay(self, retire: bool) -> None:
        """Read above the HWM, commit, maybe retire (or crash before)."""
        seqs = []
        for batch in self.reader.read(EPOCH, LANE, self.hwm):
            assert batch.lane == LANE
            got = batch.records["seq"].tolist()
            assert got == list(range(batch.first_seq, batch.end_seq))
            assert batch.records["value"].tolist() == [s / 2 for s in got]
            seqs.extend(got)
        expected = sorted(
            s for s in self.where if s > self.hwm and s not in self.lost
        )
        assert seqs == expected
        assert not set(seqs) & set(self.replayed)
        self.replayed.extend(seqs)
        if seqs:
            self.hwm = seqs[-1]  # committed with the rows
        counted = self.reader.bad_frames + self.reader.torn_frames
        assert counted == len(self.lost)
        if retire:
            for segment in self.reader.segments(EPOCH, LANE):
                self.reader.retire(segment, self.hwm)


TestSpillModel = SpillModel.TestCase
TestSpillModel.__doc__ = "The spill state machine, run by Hypothesis."
