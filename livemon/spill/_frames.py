"""
Which frames of a segment are valid, and how valid frames become batches:
pure numpy over frames already read, no files.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from ringbuf import Batch


def valid_frames(
    data: bytes,
    frames: npt.NDArray[np.void],
    *,
    epoch: int,
    lane: int,
    first_seq: int,
    crc_at: int,
    known: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Return which frames are valid: CRC checks and identity fits place.

    A frame's identity fits its place if it has the segment's epoch and
    lane, a seq of at least ``first_seq`` plus its position (exactly
    ``first_seq`` at position 0), above every valid frame's before it.

    Args:
        data: the frames' bytes, ``frames`` is a view of them.
        frames: ``frame_dtype[n]``, position order.
        known: validity of a prefix already checked (frames never change
            once published), so only the rest is CRC-checked.
    """
    n = len(frames)
    seqs = frames["seq"]
    start = 0 if known is None or len(known) > n else len(known)
    lowest = np.uint64(first_seq) + np.arange(start, n, dtype=np.uint64)
    tail = frames[start:]
    plausible = (
        (tail["epoch"] == np.uint64(epoch))
        & (tail["lane"] == np.uint32(lane))
        & (tail["seq"] >= lowest)
    )
    if start == 0 and n:
        plausible[0] &= bool(seqs[0] == first_seq)
    valid = np.zeros(n, bool)
    if start:
        assert known is not None
        valid[:start] = known
    idx = np.flatnonzero(plausible) + start
    if len(idx):
        # One zlib call per frame, over rows of a 2-D view of the bytes
        # (no slice objects built per frame); fancy-indexed (a copy) only
        # when some frames are implausible, which damage alone makes.
        size = frames.dtype.itemsize
        rows = np.frombuffer(data, np.uint8, n * size).reshape(n, size)
        chosen = rows[start:] if len(idx) == n - start else rows[idx]
        crcs = np.fromiter(
            map(zlib.crc32, chosen[:, :crc_at]), np.uint32, len(idx)
        )
        valid[idx] = crcs == frames["crc"][idx]
    _drop_out_of_order(seqs, valid)
    return valid


def _drop_out_of_order(
    seqs: npt.NDArray[np.uint64], valid: npt.NDArray[np.bool_]
) -> None:
    """Invalidate valid frames whose seq is not above the previous one's."""
    idx = np.flatnonzero(valid)
    kept = seqs[idx]
    if bool(np.all(kept[1:] > kept[:-1])):
        return
    last = -1
    for i, seq in zip(idx.tolist(), kept.tolist(), strict=True):
        if seq <= last:
            valid[i] = False
        else:
            last = seq


def above(
    seqs: npt.NDArray[np.uint64], after_seq: int
) -> npt.NDArray[np.bool_]:
    """Which seqs are above ``after_seq`` (-1: all of them)."""
    if after_seq < 0:
        return np.ones(len(seqs), bool)
    return seqs > np.uint64(after_seq)


def batches(
    lane: int, frames: npt.NDArray[np.void], dtype: np.dtype[np.void]
) -> list[Batch]:
    """Split valid frames into batches of consecutive seqs."""
    if not len(frames):
        return []
    seqs = frames["seq"]
    records = np.ascontiguousarray(frames["record"]).view(dtype)
    cuts = np.flatnonzero(seqs[1:] != seqs[:-1] + np.uint64(1)) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(frames)]
    return [
        Batch(lane, int(seqs[a]), records[a:b])
        for a, b in zip(starts, ends, strict=True)
    ]
