"""
SpillWriter: arguments, put and its reason codes, rotation, caps, files
and permissions, sync and close, fork.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import time

import numpy as np
import pytest

from livemon.exceptions import LivemonError
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_record
from livemon.spill import (
    SpillConfigError,
    SpillDirError,
    SpillDtypeError,
    SpillReader,
    SpillStatus,
    SpillWriter,
    _format,
)
from tests.livemon.spill.conftest import (
    EPOCH,
    LANE,
    RING,
    lane_dir,
    make_records,
    read_all,
    segment_bytes,
)

STORED = SpillStatus.STORED


def put_all(writer: SpillWriter, seqs) -> list[SpillStatus]:
    """Put one record per seq; return the statuses."""
    records = make_records(seqs)
    return [
        writer.put(seq, rec.tobytes())
        for seq, rec in zip(seqs, records, strict=True)
    ]


class TestArguments:
    """Bad arguments raise typed errors at construction, never later."""

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"ring": "../etc"}, SpillConfigError),
            ({"ring": "a/b"}, SpillConfigError),
            ({"epoch": -1}, SpillConfigError),
            ({"epoch": 2**64}, SpillConfigError),
            ({"lane": 2**32}, SpillConfigError),
            ({"lane": True}, SpillConfigError),
            ({"dtype": np.float64}, SpillDtypeError),
            ({"dtype": "not a dtype"}, SpillDtypeError),
            ({"dtype": np.dtype([("o", object)])}, SpillDtypeError),
            ({"segment_bytes": 200}, SpillConfigError),
            ({"lane_cap_bytes": -1}, SpillConfigError),
            ({"sync_interval_ms": -5}, SpillConfigError),
            ({"mode": 0o644}, SpillConfigError),
            ({"mode": 0o400}, SpillConfigError),
            ({"mode": 0o4600}, SpillConfigError),
        ],
        ids=str,
    )
    def test_bad_argument_raises_typed_error(self, spill_dir, kwargs, error):
        """Each bad argument raises its error, a LivemonError too."""
        args = {
            "ring": RING,
            "epoch": EPOCH,
            "lane": LANE,
            "dtype": RECORD_DTYPE,
        }
        args.update(kwargs)
        with pytest.raises(error) as info:
            SpillWriter(spill_dir, **args)
        assert isinstance(info.value, LivemonError)

    def test_spill_dir_that_is_a_file_raises(self, tmp_path):
        """A spill root that is not a directory is a SpillDirError."""
        path = tmp_path / "file"
        path.write_bytes(b"")
        with pytest.raises(SpillDirError) as info:
            SpillWriter(path, RING, EPOCH, LANE, RECORD_DTYPE)
        assert isinstance(info.value, OSError)

    def test_construction_creates_only_the_root(self, make_writer, spill_dir):
        """No segment (or lane directory) exists before the first put."""
        make_writer()
        assert spill_dir.is_dir()
        assert list(spill_dir.iterdir()) == []


class TestPut:
    """put stores records, and refuses what it cannot store, by code."""

    def test_stored_records_read_back(self, make_writer, reader):
        """Records put are read back with their seqs, in order."""
        writer = make_writer()
        assert put_all(writer, range(5)) == [STORED] * 5
        assert read_all(reader) == [(s, s) for s in range(5)]

    def test_accepts_void_and_bytes_like(self, make_writer, reader):
        """np.void, a one-record array and a bytearray are stored too."""
        writer = make_writer()
        records = make_records([0, 1, 2, 3])
        assert writer.put(0, records[0]) is STORED
        assert writer.put(1, records[1:2]) is STORED
        assert writer.put(2, bytearray(records[2].tobytes())) is STORED
        raw = np.frombuffer(records[3:4].tobytes(), np.uint8)
        assert writer.put(3, raw) is STORED
        assert read_all(reader) == [(0, 0), (1, 1), (2, 2), (3, 3)]

    def test_numpy_integer_seqs(self, make_writer, reader):
        """Seqs may be numpy integers, on a segment's first put too."""
        writer = make_writer(segment_bytes=segment_bytes(2))
        statuses = [
            writer.put(np.uint64(seq), rec.tobytes())
            for seq, rec in enumerate(make_records(range(5)))
        ]
        assert statuses == [STORED] * 5
        assert [s for s, _ in read_all(reader)] == list(range(5))

    @pytest.mark.parametrize(
        "bad",
        [b"short", None, 42, np.zeros(2, RECORD_DTYPE)],
        ids=["short", "None", "int", "two-records"],
    )
    def test_rejects_wrong_records_without_raising(self, make_writer, bad):
        """A record of the wrong size or kind is REJECTED, not raised."""
        writer = make_writer()
        assert writer.put(0, bad) is SpillStatus.REJECTED
        assert writer.drops[SpillStatus.REJECTED] == 1

    @pytest.mark.parametrize("seq", [4, 3, -1, 2**64, None, 1.5])
    def test_rejects_seqs_not_above_the_last(self, make_writer, seq):
        """Seqs must increase and fit u64; others are REJECTED."""
        writer = make_writer()
        record = make_records([0])[0].tobytes()
        assert writer.put(4, record) is STORED
        assert writer.put(seq, record) is SpillStatus.REJECTED

    def test_gaps_in_seqs_split_batches(self, make_writer, reader):
        """Seqs taken by the ring meanwhile leave gaps; batches split."""
        writer = make_writer()
        put_all(writer, [10, 11, 12, 20, 21])
        batches = list(reader.read(EPOCH, LANE))
        assert [(b.first_seq, len(b.records)) for b in batches] == [
            (10, 3),
            (20, 2),
        ]

    def test_labels_spill_too(self, spill_dir):
        """The writer is generic over the dtype: label records spill."""
        writer = SpillWriter(
            spill_dir,
            RING + ".labels",
            EPOCH,
            LANE,
            LABEL_DTYPE,
            min_free_bytes=0,
            segment_bytes=segment_bytes(4, LABEL_DTYPE.itemsize),
        )
        texts = [f"agent-{i}" for i in range(6)]
        for seq, text in enumerate(texts):
            assert writer.put(seq, label_record(text)) is STORED
        writer.close()
        reader = SpillReader(spill_dir, RING + ".labels", LABEL_DTYPE)
        got = [
            bytes(r["text"][: r["length"]]).decode()
            for b in reader.read(EPOCH, LANE)
            for r in b.records
        ]
        assert got == texts

    def test_closed_writer_rejects(self, make_writer):
        """After close every put is REJECTED."""
        writer = make_writer()
        writer.close()
        assert put_all(writer, [0]) == [SpillStatus.REJECTED]


class TestRotation:
    """Segments roll at a fixed size, named by their first seq."""

    def test_rolls_when_full(self, make_writer, reader, spill_dir):
        """20 records in segments of 8 make three files, all read back."""
        writer = make_writer(segment_bytes=segment_bytes(8))
        put_all(writer, range(100, 120))
        names = sorted(p.name for p in lane_dir(spill_dir).iterdir())
        assert names == [_format.segment_name(seq) for seq in (100, 108, 116)]
        assert read_all(reader) == [(s, s) for s in range(100, 120)]

    def test_rotated_segments_are_sealed_and_full_size(
        self, make_writer, spill_dir
    ):
        """A rolled segment keeps its size and carries the seal."""
        writer = make_writer(segment_bytes=segment_bytes(8))
        put_all(writer, range(9))
        first = lane_dir(spill_dir) / _format.segment_name(0)
        data = first.read_bytes()
        assert len(data) == segment_bytes(8)
        seal = int.from_bytes(data[72:80], "little")
        assert seal == _format.SEAL
        assert int.from_bytes(data[64:72], "little") == 8

    def test_close_trims_the_unused_tail(self, make_writer, spill_dir):
        """close gives back the preallocated space past the last frame."""
        writer = make_writer(segment_bytes=segment_bytes(8))
        put_all(writer, range(3))
        path = lane_dir(spill_dir) / _format.segment_name(0)
        assert path.stat().st_size == segment_bytes(8)
        writer.close()
        assert path.stat().st_size == segment_bytes(3)

    def test_preallocated(self, make_writer, spill_dir):
        """A new segment's blocks are allocated, not sparse."""
        writer = make_writer(segment_bytes=1 << 20)
        put_all(writer, [0])
        info = (lane_dir(spill_dir) / _format.segment_name(0)).stat()
        assert info.st_blocks * 512 >= 1 << 20


class TestCaps:
    """Caps and the free-space floor refuse segments, never block."""

    def test_lane_cap(self, make_writer, reader):
        """Past the lane cap puts return SPILL_CAP; retiring frees it."""
        writer = make_writer(
            segment_bytes=segment_bytes(4),
            lane_cap_bytes=2 * segment_bytes(4),
            retry_interval_ms=0,
        )
        statuses = put_all(writer, range(10))
        assert statuses == [STORED] * 8 + [SpillStatus.SPILL_CAP] * 2
        assert writer.drops[SpillStatus.SPILL_CAP] == 2
        assert read_all(reader) == [(s, s) for s in range(8)]
        for segment in reader.segments(EPOCH, LANE):
            assert reader.retire(segment, 7)
        assert put_all(writer, [10]) == [STORED]

    def test_total_cap_counts_other_lanes(self, make_writer):
        """The total cap sums every lane's files below the spill dir."""
        size = segment_bytes(4)
        other = make_writer(lane=LANE + 1, segment_bytes=size)
        assert put_all(other, range(4)) == [STORED] * 4
        other.close()  # full, so it keeps its whole size
        tight = make_writer(
            segment_bytes=size, total_cap_bytes=size + size // 2
        )
        assert put_all(tight, [0]) == [SpillStatus.SPILL_CAP]
        roomy = make_writer(
            lane=LANE + 2, segment_bytes=size, total_cap_bytes=2 * size
        )
        assert put_all(roomy, [0]) == [STORED]

    def test_total_cap_refuses(self, make_writer):
        """A total cap below one segment refuses the first segment."""
        writer = make_writer(total_cap_bytes=100)
        assert put_all(writer, [0, 1]) == [SpillStatus.SPILL_CAP] * 2

    def test_free_space_floor(self, make_writer):
        """Below the free-space floor the reason is DISK_FULL."""
        writer = make_writer(min_free_bytes=2**62)
        assert put_all(writer, [0]) == [SpillStatus.DISK_FULL]
        assert writer.drops[SpillStatus.DISK_FULL] == 1

    def test_refusal_is_remembered_until_retry(self, make_writer, spill_dir):
        """During the retry interval no segment is tried again."""
        writer = make_writer(min_free_bytes=2**62, retry_interval_ms=10**6)
        put_all(writer, [0])
        assert not (spill_dir / RING).exists() or not any(
            lane_dir(spill_dir).iterdir()
        )
        assert put_all(writer, [1, 2]) == [SpillStatus.DISK_FULL] * 2


class TestFiles:
    """Owner-only files and directories, no symlinks followed."""

    def test_owner_only_by_default(self, make_writer, spill_dir):
        """Files are 0600 and directories 0700, whatever the umask."""
        old = os.umask(0)
        try:
            writer = make_writer()
            put_all(writer, [0])
        finally:
            os.umask(old)
        path = lane_dir(spill_dir) / _format.segment_name(0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for directory in (spill_dir, spill_dir / RING, lane_dir(spill_dir)):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    def test_group_bits_when_configured(self, make_writer, spill_dir):
        """mode=0o640 gives group-readable files and 0750 directories."""
        writer = make_writer(mode=0o640)
        put_all(writer, [0])
        path = lane_dir(spill_dir) / _format.segment_name(0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert stat.S_IMODE(lane_dir(spill_dir).stat().st_mode) == 0o750

    def test_symlinked_lane_directory_is_refused(
        self, make_writer, spill_dir, tmp_path
    ):
        """A symlink planted as a lane directory is not followed."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        lane = lane_dir(spill_dir)
        lane.parent.mkdir(parents=True)
        lane.symlink_to(elsewhere)
        writer = make_writer()
        assert put_all(writer, [0]) == [SpillStatus.IO_ERROR]
        assert list(elsewhere.iterdir()) == []

    def test_stale_tmp_of_same_name_is_replaced(self, make_writer, spill_dir):
        """A leftover .tmp of a crashed creation does not block a put."""
        lane = lane_dir(spill_dir)
        lane.mkdir(parents=True)
        (lane / (_format.segment_name(0) + ".tmp")).write_bytes(b"junk")
        writer = make_writer()
        assert put_all(writer, [0]) == [STORED]
        assert sorted(p.name for p in lane.iterdir()) == [
            _format.segment_name(0)
        ]

    def test_existing_segment_is_never_replaced(self, make_writer, reader):
        """A seq already spilled (a segment of that name) is REJECTED."""
        first = make_writer()
        put_all(first, [0, 1])
        first.close()
        second = make_writer()
        assert put_all(second, [0]) == [SpillStatus.REJECTED]
        assert put_all(second, [5]) == [STORED]  # later seqs go on
        assert read_all(reader) == [(0, 0), (1, 1), (5, 5)]


class TestSync:
    """The msync interval, counted from the writer's own calls."""

    def test_zero_interval_syncs_every_put(self, make_writer):
        """With interval 0 nothing is ever left unsynced."""
        writer = make_writer(sync_interval_ms=0)
        put_all(writer, range(3))
        assert writer.unsynced_frames == 0

    def test_no_interval_leaves_it_to_sync(self, make_writer):
        """sync_interval_ms=None syncs only when asked (or rolled)."""
        writer = make_writer(sync_interval_ms=None)
        put_all(writer, range(3))
        assert writer.unsynced_frames == 3
        assert not writer.sync_if_due()
        assert writer.sync()
        assert writer.unsynced_frames == 0

    def test_sync_if_due(self, make_writer):
        """sync_if_due syncs once the interval has elapsed, not before."""
        writer = make_writer(sync_interval_ms=1)
        assert not writer.sync_if_due()  # nothing stored yet
        while writer.unsynced_frames == 0:  # a put may fall due itself
            put_all(writer, [writer._last_seq + 1])
        while not writer.sync_if_due():
            time.sleep(0.001)
        assert writer.unsynced_frames == 0


def _put_in_child(writer: SpillWriter, queue) -> None:
    queue.put(int(writer.put(100, make_records([100])[0].tobytes())))


class TestFork:
    """A forked child never writes into its parent's segment."""

    def test_child_is_rejected_parent_goes_on(self, make_writer, reader):
        """The child's put is REJECTED; the parent keeps appending."""
        writer = make_writer()
        put_all(writer, [0])
        ctx = multiprocessing.get_context("fork")
        queue = ctx.SimpleQueue()
        child = ctx.Process(target=_put_in_child, args=(writer, queue))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        assert queue.get() == SpillStatus.REJECTED
        assert put_all(writer, [1]) == [STORED]
        assert read_all(reader) == [(0, 0), (1, 1)]
