"""
The byte layout of a spill segment: header, frames, file names.

Pure functions and constants; nothing here opens a file.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import NamedTuple

import numpy as np

from livemon.exceptions import SpillConfigError, SpillDtypeError
from ringbuf import RingNameError, validate_name

MAGIC = b"LMSPILL\0"
VERSION = 1
HEADER_BYTES = 64  # the immutable fields, covered by the header CRC
DATA_OFFSET = 128  # frame 0; bytes 64..127 hold the mutable words
COMMITTED_OFFSET = 64  # u64: frames published (written after each frame)
SEALED_OFFSET = 72  # u64: SEAL once the writer closed the segment cleanly
SEAL = 0x4C41_4553_4C50_534C  # b"LSPLSEAL" read as little-endian u64
FRAME_PREFIX_BYTES = 32  # seq, epoch, lane, flags, spilled_ns
SUFFIX = ".lms"
TMP_SUFFIX = ".lms.tmp"
BAD_SUFFIX = ".bad"

# magic, version, data offset, frame bytes, record bytes, capacity in
# frames, dtype fingerprint, epoch, first seq, created ns, lane: 60 bytes,
# then the CRC-32 of those 60 bytes.
_HEADER = struct.Struct("<8sHHIII QQQQI")
_HEADER_CRC = struct.Struct("<I")
assert _HEADER.size + _HEADER_CRC.size == HEADER_BYTES

# Frame prefix: epoch u64, lane u32, flags u32 (0), seq u64, spilled ns
# u64.  Epoch, lane and flags are the same in every frame of a segment, so
# the writer fills them in for all frames when it creates the segment, and
# a put writes only seq, time and record.
FRAME_PREFIX = struct.Struct("<QIIQQ")
FRAME_SEQ_OFFSET = 16
FRAME_NS_OFFSET = 24
assert FRAME_PREFIX.size == FRAME_PREFIX_BYTES
CRC = struct.Struct("<I")

SEGMENT_NAME = re.compile(r"([0-9]{20})\.lms\Z")
EPOCH_NAME = re.compile(r"[0-9a-f]{16}\Z")
LANE_NAME = re.compile(r"[0-9]{5}\Z")
MAX_SEQ = 2**64 - 1
MAX_LANE = 2**32 - 1


class Header(NamedTuple):
    """The immutable fields of a segment header."""

    frame_bytes: int
    record_bytes: int
    capacity_frames: int
    fingerprint: int
    epoch: int
    first_seq: int
    created_ns: int
    lane: int


class HeaderError(ValueError):
    """A segment header is damaged or does not fit its reader."""


def frame_bytes_for(record_bytes: int) -> int:
    """Bytes of one frame: prefix, record, CRC, padded to 8."""
    raw = FRAME_PREFIX_BYTES + record_bytes + CRC.size
    return -(-raw // 8) * 8


def crc_offset(frame_bytes: int) -> int:
    """Offset of a frame's CRC word, the frame's last 4 bytes."""
    return frame_bytes - CRC.size


def capacity_for(segment_bytes: int, frame_bytes: int) -> int:
    """Frames a segment of ``segment_bytes`` holds."""
    return (segment_bytes - DATA_OFFSET) // frame_bytes


def frame_dtype(record_bytes: int) -> np.dtype[np.void]:
    """The numpy view of a frame, for reading frames in bulk."""
    frame = frame_bytes_for(record_bytes)
    names = ["epoch", "lane", "flags", "seq", "spilled_ns", "record", "crc"]
    formats = ["<u8", "<u4", "<u4", "<u8", "<u8", f"V{record_bytes}", "<u4"]
    offsets = [0, 8, 12, 16, 24, FRAME_PREFIX_BYTES, crc_offset(frame)]
    spec = {
        "names": names,
        "formats": formats,
        "offsets": offsets,
        "itemsize": frame,
    }
    return np.dtype(spec)  # type: ignore[call-overload, no-any-return]


def frame_crc(frame: bytes | memoryview, frame_bytes: int) -> int:
    """The CRC-32 a frame must carry: of everything before its CRC word."""
    return zlib.crc32(frame[: crc_offset(frame_bytes)])


def pack_header(header: Header) -> bytes:
    """Return the 64 header bytes, CRC last."""
    body = _HEADER.pack(
        MAGIC,
        VERSION,
        DATA_OFFSET,
        header.frame_bytes,
        header.record_bytes,
        header.capacity_frames,
        header.fingerprint,
        header.epoch,
        header.first_seq,
        header.created_ns,
        header.lane,
    )
    return body + _HEADER_CRC.pack(zlib.crc32(body))


def unpack_header(data: bytes) -> Header:
    """Check and return a segment header.

    Raises:
        HeaderError: short, wrong magic or version, or a bad CRC.
    """
    if len(data) < HEADER_BYTES:
        raise HeaderError(f"header is {len(data)} bytes, not {HEADER_BYTES}")
    body = data[: _HEADER.size]
    (crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    fields = _HEADER.unpack(body)
    if fields[0] != MAGIC:
        raise HeaderError("not a livemon spill segment (bad magic)")
    if zlib.crc32(body) != crc:
        raise HeaderError("header CRC does not match")
    version, data_offset, frame, record, capacity = fields[1:6]
    if version != VERSION:
        raise HeaderError(f"format version {version}, this reads {VERSION}")
    if data_offset != DATA_OFFSET or frame != frame_bytes_for(record):
        raise HeaderError("frame geometry does not match the format")
    return Header(frame, record, capacity, *fields[6:])


def epoch_name(epoch: int) -> str:
    """Directory name of an epoch: 16 lower-case hex digits."""
    return f"{epoch:016x}"


def lane_name(lane: int) -> str:
    """Directory name of a lane: 5 decimal digits (wider lanes widen)."""
    return f"{lane:05d}"


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first frame holds ``first_seq``."""
    return f"{first_seq:020d}{SUFFIX}"


def parse_epoch(name: str) -> int | None:
    """The epoch a directory name stands for, or None if not one."""
    return int(name, 16) if EPOCH_NAME.match(name) else None


def parse_lane(name: str) -> int | None:
    """The lane a directory name stands for, or None if not one."""
    if not name.isascii() or not name.isdigit() or len(name) < 5:
        return None
    lane = int(name)
    return lane if lane <= MAX_LANE and lane_name(lane) == name else None


def parse_segment(name: str) -> int | None:
    """The first seq a segment file name stands for, or None."""
    match = SEGMENT_NAME.match(name)
    if match is None:
        return None
    seq = int(match.group(1))
    return seq if seq <= MAX_SEQ else None


def check_dtype(dtype: object) -> np.dtype[np.void]:
    """Return ``dtype`` as a structured numpy dtype.

    Raises:
        SpillDtypeError: not a dtype, not structured, or holds objects.
    """
    try:
        record_dtype: np.dtype[np.void] = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise SpillDtypeError(f"not a numpy dtype: {dtype!r}") from exc
    if record_dtype.names is None or record_dtype.hasobject:
        raise SpillDtypeError(
            f"spilled records need a structured dtype of plain numbers and "
            f"bytes, got {record_dtype}"
        )
    return record_dtype


def check_ring(ring: object) -> str:
    """Return ``ring`` if it is a safe ring name (the directory's name).

    Raises:
        SpillConfigError: unsafe name; use letters, digits, ``_ . -``.
    """
    try:
        return validate_name(ring)
    except RingNameError as exc:
        raise SpillConfigError(str(exc)) from exc


def check_int(what: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int in ``low..high``.

    Raises:
        SpillConfigError: not an int, or out of range.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpillConfigError(
            f"{what} must be an int, not {type(value).__name__}"
        )
    if not low <= value <= high:
        raise SpillConfigError(f"{what} must be in {low}..{high}, got {value}")
    return value
