"""
SpillReader: damaged files (truncated, one bit flipped, zero-filled
tails, bad headers, misplaced frames), retire by HWM, backlog.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader, _format
from tests.livemon.spill.conftest import (
    EPOCH,
    FRAME_BYTES,
    LANE,
    RING,
    flip_bit,
    frame_offset,
    lane_dir,
    make_records,
    read_all,
    segment_bytes,
)


def spill(make_writer, seqs, *, close=True, **kwargs):
    """Write records for ``seqs``; close (seal) the writer unless not."""
    writer = make_writer(**kwargs)
    for seq, rec in zip(seqs, make_records(seqs), strict=True):
        writer.put(seq, rec.tobytes())
    if close:
        writer.close()
    return writer


def crash(writer) -> None:
    """Let the writer go unsealed, as SIGKILL would (page cache kept)."""
    writer._abandon()


def only_segment(spill_dir):
    """The path of the lane's single segment."""
    (path,) = [p for p in lane_dir(spill_dir).iterdir() if p.suffix == ".lms"]
    return path


class TestDamagedFrames:
    """One corrupt frame costs exactly one record, counted."""

    @pytest.mark.parametrize("where", [0, 8, 20, 100, FRAME_BYTES - 1])
    def test_one_bit_flipped_in_the_middle(
        self, make_writer, reader, spill_dir, where
    ):
        """A flipped bit anywhere in frame 4 of 9 loses seq 4 only."""
        spill(make_writer, range(9), segment_bytes=segment_bytes(16))
        flip_bit(only_segment(spill_dir), frame_offset(4) + where)
        got = read_all(reader)
        assert [s for s, _ in got] == [0, 1, 2, 3, 5, 6, 7, 8]
        assert all(s == r for s, r in got)
        assert (reader.bad_frames, reader.torn_frames) == (1, 0)

    def test_bad_frame_counted_once_over_many_reads(
        self, make_writer, reader, spill_dir
    ):
        """Reading the same segment again does not count the loss again."""
        spill(make_writer, range(9), segment_bytes=segment_bytes(16))
        flip_bit(only_segment(spill_dir), frame_offset(2) + 40)
        read_all(reader)
        read_all(reader)
        assert reader.bad_frames == 1

    def test_truncated_mid_frame(self, make_writer, reader, spill_dir):
        """A file cut inside frame 5 of 8 yields 0..4; 5..7 are torn."""
        writer = spill(
            make_writer, range(8), close=False, segment_bytes=segment_bytes(16)
        )
        crash(writer)
        path = only_segment(spill_dir)
        os.truncate(path, frame_offset(5) + FRAME_BYTES // 2)
        assert read_all(reader) == [(s, s) for s in range(5)]
        assert (reader.bad_frames, reader.torn_frames) == (0, 3)

    def test_zero_filled_tail(self, make_writer, reader, spill_dir):
        """Frames zeroed at the tail (lost writeback) are cut, counted."""
        writer = spill(
            make_writer, range(8), close=False, segment_bytes=segment_bytes(16)
        )
        crash(writer)
        path = only_segment(spill_dir)
        with open(path, "r+b") as f:
            f.seek(frame_offset(6))
            f.write(bytes(2 * FRAME_BYTES))
        assert read_all(reader) == [(s, s) for s in range(6)]
        assert (reader.bad_frames, reader.torn_frames) == (0, 2)

    def test_unused_preallocated_tail_is_not_a_loss(self, make_writer, reader):
        """An abandoned segment's never-written frames count as nothing."""
        writer = spill(
            make_writer, range(3), close=False, segment_bytes=segment_bytes(16)
        )
        crash(writer)
        assert read_all(reader) == [(s, s) for s in range(3)]
        assert (reader.bad_frames, reader.torn_frames) == (0, 0)

    def test_frame_published_but_count_not_yet(
        self, make_writer, reader, spill_dir
    ):
        """A whole frame past a stale count (killed between) is read."""
        writer = spill(
            make_writer, range(4), close=False, segment_bytes=segment_bytes(16)
        )
        crash(writer)
        path = only_segment(spill_dir)
        with open(path, "r+b") as f:
            f.seek(_format.COMMITTED_OFFSET)
            f.write((3).to_bytes(8, "little"))
        assert read_all(reader) == [(s, s) for s in range(4)]

    def test_misplaced_frame(self, make_writer, reader, spill_dir):
        """A valid frame copied to another place is refused there."""
        spill(make_writer, range(8), segment_bytes=segment_bytes(16))
        path = only_segment(spill_dir)
        data = bytearray(path.read_bytes())
        frame2 = data[frame_offset(2) : frame_offset(3)]
        data[frame_offset(6) : frame_offset(7)] = frame2
        path.write_bytes(bytes(data))
        got = [s for s, _ in read_all(reader)]
        assert got == [0, 1, 2, 3, 4, 5, 7]
        assert reader.bad_frames == 1

    def test_frame_of_another_lane(self, make_writer, reader, spill_dir):
        """A frame whose lane differs from the segment's is refused."""
        spill(make_writer, range(4), segment_bytes=segment_bytes(16))
        path = only_segment(spill_dir)
        data = bytearray(path.read_bytes())
        offset = frame_offset(1)
        data[offset + 8 : offset + 12] = (LANE + 1).to_bytes(4, "little")
        crc = _format.frame_crc(bytes(data[offset:]), FRAME_BYTES)
        end = offset + FRAME_BYTES
        data[end - 4 : end] = crc.to_bytes(4, "little")
        path.write_bytes(bytes(data))
        assert [s for s, _ in read_all(reader)] == [0, 2, 3]


class TestBadHeader:
    """A segment with a bad header is set aside; the rest is read."""

    @pytest.mark.parametrize(
        "damage",
        ["flip", "magic", "empty", "other-dtype", "renamed"],
    )
    def test_set_aside_and_others_read(
        self, make_writer, reader, spill_dir, damage
    ):
        """The bad segment becomes .bad; the other segments still read."""
        spill(make_writer, range(12), segment_bytes=segment_bytes(4))
        lane = lane_dir(spill_dir)
        victim = lane / _format.segment_name(4)
        if damage == "flip":
            flip_bit(victim, 33)
        elif damage == "magic":
            flip_bit(victim, 0)
        elif damage == "empty":
            os.truncate(victim, 0)
        elif damage == "renamed":
            victim.rename(lane / _format.segment_name(5))
            victim = lane / _format.segment_name(5)
        else:
            other = np.dtype([("x", "<u8"), *RECORD_DTYPE.descr[1:]])
            reader = SpillReader(spill_dir, RING, other)
            # Same size, another layout: every segment is set aside.
            assert read_all(reader) == []
            assert reader.bad_segments == 3
            return
        got = [s for s, _ in read_all(reader)]
        assert got == [0, 1, 2, 3, 8, 9, 10, 11]
        assert reader.bad_segments == 1
        assert (lane / (victim.name + ".bad")).exists()
        assert not victim.exists()

    def test_active_segment_of_another_dtype_is_left_alone(
        self, make_writer, spill_dir
    ):
        """A live writer's segment is skipped, not set aside, until it
        is abandoned."""
        writer = spill(make_writer, range(3), close=False)
        other = np.dtype([("x", "<u8"), *RECORD_DTYPE.descr[1:]])
        reader = SpillReader(spill_dir, RING, other)
        assert read_all(reader) == []
        assert reader.bad_segments == 0
        assert only_segment(spill_dir).exists()
        writer.close()
        assert read_all(reader) == []
        assert reader.bad_segments == 1

    def test_other_files_and_dirs_ignored(
        self, make_writer, reader, spill_dir
    ):
        """Names that are not segments, epochs or lanes are left alone."""
        spill(make_writer, range(3))
        lane = lane_dir(spill_dir)
        (lane / "notes.txt").write_text("hi")
        (lane / "12.lms").write_bytes(b"")
        (spill_dir / RING / "not-an-epoch").mkdir()
        assert reader.lanes() == [(EPOCH, LANE)]
        assert [s for s, _ in read_all(reader)] == [0, 1, 2]
        assert (lane / "notes.txt").exists() and (lane / "12.lms").exists()

    def test_missing_directories_read_as_empty(self, tmp_path):
        """A reader of a spill dir nobody wrote finds nothing, no error."""
        reader = SpillReader(tmp_path / "none", RING, RECORD_DTYPE)
        assert reader.lanes() == []
        assert list(reader.read(EPOCH, LANE)) == []


class TestRetire:
    """Segments are unlinked only when every seq is committed."""

    def test_retire_by_hwm(self, make_writer, reader, spill_dir):
        """Only segments wholly at or below the HWM are unlinked."""
        spill(make_writer, range(10), segment_bytes=segment_bytes(4))
        segments = reader.segments(EPOCH, LANE)
        assert [s.first_seq for s in segments] == [0, 4, 8]
        assert [reader.retire(s, 6) for s in segments] == [
            True,
            False,
            False,
        ]
        assert [reader.retire(s, 9) for s in segments[1:]] == [True, True]
        assert list(lane_dir(spill_dir).iterdir()) == []

    def test_active_segment_is_never_retired(self, make_writer, reader):
        """A segment its writer still appends to stays, HWM or not."""
        writer = spill(make_writer, range(3), close=False)
        (segment,) = reader.segments(EPOCH, LANE)
        assert not reader.retire(segment, 10**6)
        writer.close()
        assert reader.retire(segment, 10**6)

    def test_crash_between_commit_and_unlink(self, make_writer, spill_dir):
        """A segment left after its rows committed replays nothing."""
        spill(make_writer, range(10), segment_bytes=segment_bytes(4))
        first = SpillReader(spill_dir, RING, RECORD_DTYPE)
        committed = read_all(first)
        hwm = committed[-1][0]
        # The daemon commits rows and HWM, then dies before retiring.
        again = SpillReader(spill_dir, RING, RECORD_DTYPE)
        assert read_all(again, after_seq=hwm) == []
        assert all(again.retire(s, hwm) for s in again.segments(EPOCH, LANE))

    def test_partial_hwm_replays_the_rest_once(self, make_writer, reader):
        """After an HWM inside a segment only the later seqs come back."""
        spill(make_writer, range(10), segment_bytes=segment_bytes(4))
        assert [s for s, _ in read_all(reader, after_seq=5)] == [6, 7, 8, 9]

    def test_segment_of_lost_frames_only_is_retired(
        self, make_writer, reader, spill_dir
    ):
        """A segment whose frames are all lost goes once read."""
        spill(make_writer, range(2), segment_bytes=segment_bytes(16))
        path = only_segment(spill_dir)
        flip_bit(path, frame_offset(0) + 40)
        flip_bit(path, frame_offset(1) + 40)
        assert read_all(reader) == []
        assert reader.bad_frames + reader.torn_frames == 2
        (segment,) = reader.segments(EPOCH, LANE)
        assert reader.retire(segment, -1)


class TestBacklog:
    """Backlog per lane, from headers: records, bytes, oldest age."""

    def test_backlog(self, make_writer, reader):
        """Records above the HWM, bytes on disk and the oldest's time."""
        writer = spill(
            make_writer, range(10), close=False, segment_bytes=segment_bytes(4)
        )
        full = reader.backlog(EPOCH, LANE)
        assert (full.segments, full.records) == (3, 10)
        assert full.size_bytes == 3 * segment_bytes(4)
        assert full.oldest_ns is not None
        assert full.oldest_age_s(full.oldest_ns) == 0.0
        part = reader.backlog(EPOCH, LANE, after_seq=5)
        assert part.records == 4
        assert part.oldest_ns >= full.oldest_ns
        writer.close()
        assert reader.backlog(EPOCH, LANE, after_seq=9).records == 0

    def test_empty(self, reader):
        """No files: an empty backlog."""
        backlog = reader.backlog(EPOCH, LANE)
        assert backlog == (0, 0, 0, None)
        assert backlog.oldest_age_s() == 0.0
