"""
The segment format: header round trip and damage, frame layout, names,
and the dtype fingerprint shared with the ring.
"""

from __future__ import annotations

import numpy as np
import pytest

from livemon.record import LABEL_DTYPE, RECORD_DTYPE
from livemon.spill import _format
from ringbuf import _layout, dtype_fingerprint

HEADER = _format.Header(
    frame_bytes=_format.frame_bytes_for(RECORD_DTYPE.itemsize),
    record_bytes=RECORD_DTYPE.itemsize,
    capacity_frames=100,
    fingerprint=dtype_fingerprint(RECORD_DTYPE),
    epoch=2**63 + 5,
    first_seq=2**64 - 1,
    created_ns=1_700_000_000_000_000_000,
    lane=2**32 - 1,
)


class TestHeader:
    """The 64-byte header: explicit little-endian, CRC last."""

    def test_round_trip(self):
        """Packing then unpacking gives the same fields, at full range."""
        data = _format.pack_header(HEADER)
        assert len(data) == _format.HEADER_BYTES
        assert data[:8] == b"LMSPILL\0"
        assert _format.unpack_header(data) == HEADER

    def test_little_endian_offsets(self):
        """Fields sit where the SpillWriter docstring says."""
        data = _format.pack_header(HEADER)
        word = lambda at: int.from_bytes(data[at : at + 8], "little")  # noqa: E731
        assert int.from_bytes(data[8:10], "little") == _format.VERSION
        assert word(24) == HEADER.fingerprint
        assert word(32) == HEADER.epoch
        assert word(40) == HEADER.first_seq
        assert int.from_bytes(data[56:60], "little") == HEADER.lane

    @pytest.mark.parametrize("byte", range(0, 64, 7))
    def test_any_flipped_bit_is_caught(self, byte):
        """One flipped bit anywhere in the header is refused."""
        data = bytearray(_format.pack_header(HEADER))
        data[byte] ^= 0x10
        with pytest.raises(_format.HeaderError):
            _format.unpack_header(bytes(data))

    def test_short(self):
        """A header cut short is refused."""
        with pytest.raises(_format.HeaderError):
            _format.unpack_header(_format.pack_header(HEADER)[:40])


class TestFrames:
    """Fixed-width frames, CRC last, for any record dtype."""

    @pytest.mark.parametrize("dtype", [RECORD_DTYPE, LABEL_DTYPE])
    def test_layout(self, dtype):
        """Prefix, record, padding to 8, and the CRC in the last 4 bytes."""
        frame = _format.frame_dtype(dtype.itemsize)
        assert frame.itemsize == _format.frame_bytes_for(dtype.itemsize)
        assert frame.itemsize % 8 == 0
        assert frame.fields["record"][1] == _format.FRAME_PREFIX_BYTES
        assert frame.fields["seq"][1] == _format.FRAME_SEQ_OFFSET
        assert frame.fields["crc"][1] == frame.itemsize - 4

    def test_crc_covers_everything_before_it(self):
        """frame_crc is the CRC-32 of the frame minus its CRC word."""
        frame = np.zeros(1, _format.frame_dtype(RECORD_DTYPE.itemsize))
        frame["seq"] = 7
        data = frame.tobytes()
        assert _format.frame_crc(data, len(data)) != _format.frame_crc(
            bytes(len(data)), len(data)
        )


class TestNames:
    """Directory and file names: formatted by us, parsed strictly."""

    def test_round_trips(self):
        """Each name parses back to its number."""
        assert _format.parse_epoch(_format.epoch_name(2**64 - 1)) == 2**64 - 1
        assert _format.parse_lane(_format.lane_name(4095)) == 4095
        assert _format.parse_lane(_format.lane_name(2**32 - 1)) == 2**32 - 1
        assert _format.parse_segment(_format.segment_name(12)) == 12

    @pytest.mark.parametrize(
        "name", ["12.lms", "x" * 20 + ".lms", "0" * 20 + ".lms.tmp", ".."]
    )
    def test_not_segments(self, name):
        """Other names are not segments."""
        assert _format.parse_segment(name) is None

    @pytest.mark.parametrize("name", ["3", "003", "00003x", "٣٣٣٣٣", ".."])
    def test_not_lanes(self, name):
        """Short, padded wrongly, non-ASCII digits: not lanes."""
        assert _format.parse_lane(name) is None


class TestFingerprint:
    """The spill header's fingerprint is the ring header's."""

    @pytest.mark.parametrize("dtype", [RECORD_DTYPE, LABEL_DTYPE])
    def test_same_as_a_ring_header(self, dtype, make_ring):
        """A spill header carries the fingerprint a ring of the same dtype
        stores in its header, so files match rings."""
        ring = make_ring(dtype, lanes=1, capacity=8)
        stored = int(ring._lanes.words()[_layout.H_FINGERPRINT])
        assert dtype_fingerprint(dtype) == stored
