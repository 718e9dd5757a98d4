"""
The byte layout of a ring segment: header fields, lane geometry, offsets.

Pure functions and constants; nothing here touches shared memory.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import numpy as np

from ringbuf.exceptions import RingNameError

MAGIC = 0x474E_4952_4E4F_4D4C  # b"LMONRING" read as little-endian u64
LAYOUT_VERSION = 1
CACHE_LINE_BYTES = 64
HEADER_BYTES = 128
LANE_HEADER_BYTES = 2 * CACHE_LINE_BYTES
MAX_NAME_CHARS = 200
CONSUMER_LOCK_BYTE = 1 << 32  # in the lock file, past every lane's byte
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

# Header words (u64 each, little-endian), see the Ring docstring.
H_MAGIC, H_VERSION, H_RECORD_BYTES, H_LANES, H_CAPACITY = 0, 1, 2, 3, 4
H_FINGERPRINT, H_EPOCH, H_CREATED_NS, H_CHECKSUM = 5, 6, 7, 8
HEADER_WORDS = 9

# Lane header words, relative to the lane's first word.  The producer's
# words share one cache line, the consumer's tail sits alone on the next.
L_HEAD, L_DROPPED, L_OWNER_PID, L_CLAIMS = 0, 1, 2, 3
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


def dtype_fingerprint(dtype: np.dtype[np.void]) -> int:
    """Return a stable 64-bit fingerprint of a structured dtype's layout."""
    descr = repr(np.lib.format.dtype_to_descr(dtype)) + f"|{dtype.itemsize}"
    digest = hashlib.blake2b(descr.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def header_checksum(words: np.ndarray) -> int:
    """Return the checksum stored after the header's other words."""
    digest = hashlib.blake2b(words[:H_CHECKSUM].tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")
