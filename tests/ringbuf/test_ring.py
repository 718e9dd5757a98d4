"""
The ring in one process: geometry, put/pending/advance, window, errors.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import ringbuf
from ringbuf import _layout, _open
from tests.ringbuf.records import TEST_DTYPE, intact, make_records

_ATTACH_AND_EXIT = """
import sys, numpy as np, ringbuf
from tests.ringbuf.records import TEST_DTYPE
ring = ringbuf.Ring.attach(sys.argv[1], TEST_DTYPE)
writer = ring.writer()
assert writer.put(np.zeros(1, TEST_DTYPE)[0])
writer.close(); ring.close()
"""


def flip_byte(name: str, offset: int) -> None:
    """Invert one byte of segment ``name`` through its file."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ 0xFF]), offset)
    finally:
        os.close(fd)


class TestCreateAttach:
    def test_attach_sees_the_creators_geometry_and_epoch(self, make_ring):
        """An attacher reads lanes, capacity and epoch from the header."""
        ring = make_ring(TEST_DTYPE, lanes=3, capacity=16)
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as other:
            assert (other.lanes, other.capacity_records) == (3, 16)
            assert other.epoch == ring.epoch

    def test_two_rings_get_different_epochs(self, ring_name):
        """A recreated ring has a new epoch, so identities never collide."""
        epochs = []
        for _ in range(2):
            with ringbuf.Ring.create(ring_name, TEST_DTYPE, 1, 4) as ring:
                epochs.append(ring.epoch)
                ring.unlink()
        assert epochs[0] != epochs[1]

    def test_open_creates_then_attaches(self, ring_name):
        """open() is attach-or-create; geometry only counts at creation."""
        with (
            ringbuf.Ring.open(ring_name, TEST_DTYPE, 2, 8) as first,
            ringbuf.Ring.open(ring_name, TEST_DTYPE, 9, 99) as second,
        ):
            assert second.epoch == first.epoch
            assert second.lanes == 2

    def test_create_twice_is_refused(self, make_ring):
        """A second create names the problem and the fix."""
        ring = make_ring(TEST_DTYPE)
        with pytest.raises(ringbuf.RingExists, match="attach"):
            ringbuf.Ring.create(ring.name, TEST_DTYPE, 1, 4)

    def test_attach_missing(self, ring_name):
        """Attaching to nothing is a RingNotFound (a FileNotFoundError)."""
        with pytest.raises(ringbuf.RingNotFound) as info:
            ringbuf.Ring.attach(ring_name, TEST_DTYPE)
        assert isinstance(info.value, FileNotFoundError)

    def test_wrong_dtype(self, make_ring):
        """Another record dtype is refused, with a TypeError category."""
        ring = make_ring(TEST_DTYPE)
        other = np.dtype([("x", "<u8"), ("y", "<f4")])
        with pytest.raises(ringbuf.RecordDtypeError, match="another dtype"):
            ringbuf.Ring.attach(ring.name, other)

    def test_same_size_different_fields_is_still_refused(self, make_ring):
        """The fingerprint covers field names and types, not just size."""
        ring = make_ring(TEST_DTYPE)
        renamed = np.dtype(
            [
                (n if n != "index" else "idx", TEST_DTYPE[n])
                for n in TEST_DTYPE.names
            ]
        )
        assert renamed.itemsize == TEST_DTYPE.itemsize
        with pytest.raises(ringbuf.RecordDtypeError):
            ringbuf.Ring.attach(ring.name, renamed)

    def test_damaged_header(self, make_ring, monkeypatch):
        """A flipped header byte is caught by the checksum."""
        monkeypatch.setattr(_open, "_ATTACH_WAIT_S", 0.05)
        ring = make_ring(TEST_DTYPE)
        flip_byte(ring.name, _layout.H_CAPACITY * 8)
        with pytest.raises(ringbuf.RingCorrupt, match="damaged"):
            ringbuf.Ring.attach(ring.name, TEST_DTYPE)

    def test_not_structured(self, ring_name):
        """A plain dtype cannot be a record."""
        with pytest.raises(ringbuf.RecordDtypeError, match="structured"):
            ringbuf.Ring.create(ring_name, np.float64, 1, 4)

    @pytest.mark.parametrize(
        "name", ["../etc", "a/b", "", ".hidden", "sp ace", "x" * 300, 7]
    )
    def test_unsafe_names_are_refused(self, name):
        """Names with separators, odd characters or bad types are refused."""
        with pytest.raises(ringbuf.RingNameError):
            ringbuf.Ring.create(name, TEST_DTYPE, 1, 4)

    @pytest.mark.parametrize(
        ("lanes", "capacity"), [(0, 4), (1, 0), (5000, 4), (1.5, 4)]
    )
    def test_bad_geometry(self, ring_name, lanes, capacity):
        """Geometry outside its range is a ValueError or TypeError."""
        with pytest.raises((ValueError, TypeError)):
            ringbuf.Ring.create(ring_name, TEST_DTYPE, lanes, capacity)

    def test_owner_only_by_default(self, make_ring):
        """Segment and lock file are 0600 unless a mode is given."""
        ring = make_ring(TEST_DTYPE)
        for path in (f"/dev/shm/{ring.name}", f"/dev/shm/{ring.name}.lanes"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    def test_group_mode_survives_the_umask(self, ring_name):
        """A group-readable mode is applied exactly despite umask 022."""
        old = os.umask(0o022)
        try:
            ring = ringbuf.Ring.create(ring_name, TEST_DTYPE, 1, 4, mode=0o660)
        finally:
            os.umask(old)
        ring.close()
        mode = os.stat(f"/dev/shm/{ring_name}").st_mode
        assert stat.S_IMODE(mode) == 0o660

    def test_segment_survives_an_attaching_process(self, make_ring):
        """The resource tracker of an exiting attacher must not unlink."""
        ring = make_ring(TEST_DTYPE)
        subprocess.run(
            [sys.executable, "-c", _ATTACH_AND_EXIT, ring.name],
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        )
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as again:
            assert sum(again.lane_state(i).head for i in range(4)) == 1

    def test_close_is_idempotent_and_pickle_reattaches(self, make_ring):
        """close() twice is fine; a pickled ring attaches by name."""
        import pickle

        ring = make_ring(TEST_DTYPE)
        clone = pickle.loads(pickle.dumps(ring))
        assert clone.epoch == ring.epoch
        clone.close()
        clone.close()


class TestProduceConsume:
    def test_put_pending_advance(self, make_ring):
        """Records come back in order with their seqs; advance consumes."""
        ring = make_ring(TEST_DTYPE, lanes=2, capacity=8)
        writer = ring.writer()
        records = make_records(1, 0, 5)
        for record in records:
            assert writer.put(record)
        batch = ring.pending(writer.lane)
        assert (batch.first_seq, batch.end_seq) == (0, 5)
        assert np.array_equal(batch.records, records)
        ring.advance(writer.lane, 3)
        assert ring.pending(writer.lane).first_seq == 3
        assert len(ring.pending(writer.lane, max_records=1).records) == 1

    def test_put_accepts_raw_bytes(self, make_ring):
        """A bytes-like record of exactly the record size is stored as is."""
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        record = make_records(2, 7, 1)
        assert writer.put(record.tobytes())
        assert np.array_equal(ring.pending(writer.lane).records, record)

    @pytest.mark.parametrize(
        "bad", [b"short", "text", np.zeros(1, [("x", "<u8")])[0]]
    )
    def test_put_rejects_the_wrong_record(self, make_ring, bad):
        """Wrong size or dtype raises RecordDtypeError, stores nothing."""
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        with pytest.raises(ringbuf.RecordDtypeError):
            writer.put(bad)
        assert ring.lane_state(writer.lane).head == 0

    def test_full_lane_drops_and_counts(self, make_ring):
        """A full lane never blocks: put returns False, dropped grows."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=4)
        writer = ring.writer()
        results = [writer.put(r) for r in make_records(0, 0, 6)]
        assert results == [True] * 4 + [False] * 2
        state = ring.lane_state(0)
        assert (state.head, state.dropped, state.pending) == (4, 2, 4)

    def test_put_many_wraps_and_drops_the_excess(self, make_ring):
        """put_many wraps around the lane end and counts what did not fit."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=8)
        writer = ring.writer()
        assert writer.put_many(make_records(0, 0, 6)) == 6
        ring.advance(0, 6)
        batch = make_records(0, 6, 10)
        assert writer.put_many(batch) == 8
        pending = ring.pending(0)
        assert pending.first_seq == 6
        assert np.array_equal(pending.records, batch[:8])
        assert ring.lane_state(0).dropped == 2

    def test_put_many_rejects_other_dtypes(self, make_ring):
        """A batch of another dtype or shape is refused."""
        writer = make_ring(TEST_DTYPE).writer()
        with pytest.raises(ringbuf.RecordDtypeError):
            writer.put_many(np.zeros(3, np.float64))
        with pytest.raises(ringbuf.RecordDtypeError):
            writer.put_many(np.zeros((2, 2), TEST_DTYPE))

    def test_advance_out_of_range(self, make_ring):
        """The tail cannot pass the head or move backwards."""
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        writer.put(make_records(0, 0, 1)[0])
        with pytest.raises(ValueError, match="between"):
            ring.advance(writer.lane, 2)

    def test_window_keeps_consumed_records_until_overwritten(self, make_ring):
        """The window reads drained slots too, newest capacity-1 of them."""
        ring = make_ring(TEST_DTYPE, lanes=2, capacity=8)
        writer = ring.writer()
        for start in range(0, 20, 4):
            writer.put_many(make_records(0, start, 4))
            ring.advance(writer.lane, ring.lane_state(writer.lane).head)
        window = ring.window(per_lane=100)
        assert list(window.seqs) == list(range(13, 20))
        assert list(window.records["index"]) == list(range(13, 20))
        assert set(window.lanes) == {writer.lane}
        assert intact(window.records)
        assert len(ring.window(per_lane=3).records) == 3


class TestLanes:
    def test_writers_in_one_process_get_distinct_lanes(self, make_ring):
        """OFD locks conflict inside one process too."""
        ring = make_ring(TEST_DTYPE, lanes=3)
        writers = [ring.writer() for _ in range(3)]
        assert sorted(w.lane for w in writers) == [0, 1, 2]
        assert all(ring.lane_state(i).owned for i in range(3))

    def test_all_lanes_taken(self, make_ring):
        """The writer that finds no lane fails at construction."""
        ring = make_ring(TEST_DTYPE, lanes=2)
        held = [ring.writer(), ring.writer()]
        with pytest.raises(ringbuf.LanesExhausted, match="more lanes"):
            ring.writer()
        held[0].close()
        assert ring.writer().lane == 0

    def test_closed_lane_is_reused_with_seq_continuing(self, make_ring):
        """A lane given back keeps its numbering for the next owner."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=16)
        first = ring.writer()
        first.put_many(make_records(0, 0, 5))
        first.close()
        with pytest.raises(ringbuf.RingError, match="closed"):
            first.put(make_records(0, 5, 1)[0])
        second = ring.writer()
        second.put(make_records(1, 0, 1)[0])
        batch = ring.pending(0)
        assert batch.end_seq == 6
        assert list(batch.records["producer"]) == [0] * 5 + [1]
        assert ring.lane_state(0).claims == 2


class TestScribbledCursors:
    def test_new_owner_repairs_a_head_out_of_range(self, make_ring):
        """A lane whose head was scribbled far ahead (or behind its tail)
        is taken over at its tail: the consumer reads it again."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=8)
        words = ring._lanes.words()
        base = ring._lanes.lane_word(0)
        for head, tail in ((10**9, 3), (2, 5)):
            words[base + _layout.L_HEAD] = head
            words[base + _layout.L_TAIL] = tail
            with ring.writer() as writer:
                assert writer.put(make_records(0, 0, 1)[0])
            state = ring.lane_state(0)
            assert (state.tail, state.head) == (tail, tail + 1)
            assert len(ring.pending(0).records) == 1
