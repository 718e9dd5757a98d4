"""
The byte layout of a ring segment: header fields, lane geometry, offsets,
and the checks on arguments and headers that depend on nothing else.

Pure functions and constants; nothing here touches shared memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ringbuf.exceptions import (
    RecordDtypeError,
    RingArgumentError,
    RingArgumentTypeError,
    RingCorrupt,
    RingNameError,
)

SHM_DIR = "/dev/shm"
MAGIC = 0x474E_4952_4E4F_4D4C  # b"LMONRING" read as little-endian u64
LAYOUT_VERSION = 1
CACHE_LINE_BYTES = 64
HEADER_BYTES = 128
LANE_HEADER_BYTES = 2 * CACHE_LINE_BYTES
MAX_NAME_CHARS = 200
MAX_LANES = 4096
MAX_CAPACITY_RECORDS = 2**31
MAX_PUBLISH_STEP = 64  # put_many publishes head at least this often


def publish_step(capacity_records: int) -> int:
    """How many slots ``put_many`` writes before it publishes ``head``.

    The window reader discards that many more of the oldest slots, so
    the step stays a small share of the lane (an eighth at most).
    """
    return max(1, min(MAX_PUBLISH_STEP, capacity_records // 8))


CONSUMER_LOCK_BYTE = 1 << 32  # in the lock file, past every lane's byte
COUNTER_LOCK_BYTE = CONSUMER_LOCK_BYTE + 1  # guards H_REFUSED_CLAIMS
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

# Header words (u64 each, little-endian), see the Ring docstring.  Words
# 0-8 are layout version 1 as every release reads it; the checksum covers
# words 0-7.  Words 9-15 were zero and unused before: new fields go there,
# outside the checksum, so a process of an older release ignores them.
H_MAGIC, H_VERSION, H_RECORD_BYTES, H_LANES, H_CAPACITY = 0, 1, 2, 3, 4
H_FINGERPRINT, H_EPOCH, H_CREATED_NS, H_CHECKSUM = 5, 6, 7, 8
HEADER_WORDS = 9  # the words an attacher validates
H_RETIRED = 9  # nonzero: producers must stop writing (Ring.retire)
H_REFUSED_CLAIMS = 10  # writers refused a lane (LanesExhausted)

# Lane header words, relative to the lane's first word.  The producer's
# words share one cache line, the consumer's tail sits alone on the next.
L_HEAD, L_DROPPED, L_OWNER_PID, L_CLAIMS = 0, 1, 2, 3
# Words 4-7: counters of the producer's own (RingWriter.count), zero in
# releases before them, which never write them.
L_COUNTERS, COUNTERS = 4, 4
L_TAIL = CACHE_LINE_BYTES // 8


class Geometry(NamedTuple):
    """Where everything lives in a segment of a given shape."""

    record_bytes: int
    lanes: int
    capacity_records: int

    @property
    def lane_stride_bytes(self) -> int:
        """Bytes from one lane's header to the next, cache-line aligned."""
        raw = LANE_HEADER_BYTES + self.capacity_records * self.record_bytes
        return -(-raw // CACHE_LINE_BYTES) * CACHE_LINE_BYTES

    @property
    def size_bytes(self) -> int:
        """Total segment size."""
        return HEADER_BYTES + self.lanes * self.lane_stride_bytes

    def lane_offset(self, lane: int) -> int:
        """Byte offset of a lane's header."""
        return HEADER_BYTES + lane * self.lane_stride_bytes

    def slots_offset(self, lane: int) -> int:
        """Byte offset of a lane's first slot."""
        return self.lane_offset(lane) + LANE_HEADER_BYTES


def validate_name(name: object) -> str:
    """Return ``name`` if it is a safe segment name.

    Raises:
        RingNameError: ``name`` is not a string, holds a path separator or
            another unsafe character, or is empty or too long; use
            letters, digits, ``_ . -``.
    """
    if not isinstance(name, str):
        raise RingNameError(
            f"ring name must be a str, not {type(name).__name__}"
        )
    if len(name) > MAX_NAME_CHARS or not _SAFE_NAME.match(name):
        raise RingNameError(
            f"unsafe ring name {name!r}: use 1-{MAX_NAME_CHARS} letters, "
            "digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def segment_path(name: str) -> str:
    """The file of segment ``name``."""
    return os.path.join(SHM_DIR, name)


def lock_path(name: str) -> str:
    """The lane-lock file beside segment ``name``."""
    return os.path.join(SHM_DIR, name + ".lanes")


def check_int(what: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int in ``low..high``.

    Raises:
        RingArgumentTypeError: not an int (bools are refused too).
        RingArgumentError: out of range.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise RingArgumentTypeError(
            f"{what} must be an int, not {type(value).__name__}"
        )
    if not low <= value <= high:
        raise RingArgumentError(
            f"{what} must be in {low}..{high}, got {value}"
        )
    return value


def structured(dtype: npt.DTypeLike) -> np.dtype[np.void]:
    """Return ``dtype`` as a structured dtype of plain fields.

    Raises:
        RecordDtypeError: not a dtype, or not structured, or with objects.
    """
    try:
        record_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise RecordDtypeError(f"not a numpy dtype: {dtype!r}") from exc
    if record_dtype.names is None or record_dtype.hasobject:
        raise RecordDtypeError(
            f"ring records need a structured dtype of plain numbers and "
            f"bytes, got {record_dtype}"
        )
    return record_dtype


def dtype_fingerprint(dtype: np.dtype[np.void]) -> int:
    """Return a stable 64-bit fingerprint of a structured dtype's layout."""
    descr = repr(np.lib.format.dtype_to_descr(dtype)) + f"|{dtype.itemsize}"
    digest = hashlib.blake2b(descr.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def header_checksum(words: npt.NDArray[np.uint64]) -> int:
    """Return the checksum stored after the header's other words."""
    digest = hashlib.blake2b(words[:H_CHECKSUM].tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def header_complete(words: npt.NDArray[np.uint64]) -> bool:
    """Tell whether a copy of the header words carries a valid checksum."""
    return bool(words[H_CHECKSUM] == header_checksum(words))


def parse_header(
    name: str,
    words: npt.NDArray[np.uint64],
    size_bytes: int,
    dtype: np.dtype[np.void],
) -> Geometry:
    """Return the geometry of a complete header, checked against ``dtype``.

    Args:
        name: the ring's name, for messages.
        words: uint64[HEADER_WORDS], a copy of the header.
        size_bytes: the segment's size.
        dtype: the record dtype the caller expects.

    Raises:
        RingCorrupt: not a ring, another layout version, or too small.
        RecordDtypeError: the ring holds records of another dtype.
    """
    if words[H_MAGIC] != MAGIC:
        raise RingCorrupt(f"{name!r} is not a ringbuf segment")
    if words[H_VERSION] != LAYOUT_VERSION:
        raise RingCorrupt(
            f"ring {name!r} has layout version {words[H_VERSION]}, this "
            f"ringbuf reads {LAYOUT_VERSION}: stop its users and recreate it"
        )
    geometry = Geometry(
        int(words[H_RECORD_BYTES]),
        int(words[H_LANES]),
        int(words[H_CAPACITY]),
    )
    if size_bytes < geometry.size_bytes:
        raise RingCorrupt(
            f"ring {name!r} is {size_bytes} bytes, its header says "
            f"{geometry.size_bytes}: unlink and recreate it"
        )
    if words[H_FINGERPRINT] != dtype_fingerprint(dtype):
        raise RecordDtypeError(
            f"ring {name!r} holds records of another dtype "
            f"({geometry.record_bytes} bytes each; yours are "
            f"{dtype.itemsize}): use the same dtype as its creator"
        )
    return geometry
