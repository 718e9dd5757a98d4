"""
A test record dtype whose checksum proves a record arrived bit-for-bit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

TEST_DTYPE = np.dtype(
    [
        ("producer", "<u4"),
        ("index", "<u8"),
        ("payload", "<u8", (6,)),
        ("checksum", "<u8"),
    ]
)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def checksum(records: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """Mix every field except the checksum into one u64 per record."""
    with np.errstate(over="ignore"):
        acc = records["producer"].astype(np.uint64) * _MIX
        acc ^= records["index"] * _MIX
        for column in range(records["payload"].shape[1]):
            acc = acc * _MIX + records["payload"][:, column]
    return acc


def make_records(
    producer: int, start: int, count: int
) -> npt.NDArray[np.void]:
    """Records ``start .. start+count-1`` of ``producer``, checksummed."""
    records = np.zeros(count, TEST_DTYPE)
    records["producer"] = producer
    records["index"] = np.arange(start, start + count, dtype=np.uint64)
    records["payload"] = (
        records["index"][:, None] * np.arange(1, 7, dtype=np.uint64) + producer
    )
    records["checksum"] = checksum(records)
    return records


def intact(records: npt.NDArray[np.void]) -> bool:
    """True if every record's checksum matches its fields."""
    return bool(np.array_equal(checksum(records), records["checksum"]))
