"""
Which frames of a segment are valid, and how valid frames become batches:
pure numpy over frames already read, no files.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

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
    size = frames.dtype.itemsize
    if len(idx) == n - start and _run_is_whole(data, start, n, size):
        valid[start:] = True  # the common case: one C call for them all
    elif len(idx):
        # One zlib call per frame, over rows of a 2-D view of the bytes
        # (no slice objects built per frame); fancy-indexed (a copy) only
        # when some frames are implausible, which damage alone makes.
        rows = np.frombuffer(data, np.uint8, n * size).reshape(n, size)
        chosen = rows[start:] if len(idx) == n - start else rows[idx]
        crcs = np.fromiter(
            map(zlib.crc32, chosen[:, :crc_at]), np.uint32, len(idx)
        )
        valid[idx] = crcs == frames["crc"][idx]
    _drop_out_of_order(seqs, valid)
    return valid


def _run_is_whole(data: bytes, start: int, end: int, size: int) -> bool:
    """Whether frames ``start..end`` of ``data`` all carry their CRC, by
    one CRC-32 over the run.

    Every whole frame is ``body + crc32(body)``, so CRC-32 maps a run of
    them from ``run_seed(size)`` back to that seed, however many and
    whatever they hold.  Damage confined to one frame changes the result
    exactly when it changes that frame's own check (CRC-32 is linear and
    shifting an error along, x^k, never cancels it modulo its
    polynomial), so one corrupt frame fails the run, and the caller
    then checks frame by frame, costing exactly that record.  Damage to
    several frames passes only if it cancels out: the 2^-32 chance one
    frame's CRC-32 leaves.
    """
    seed = run_seed(size)
    if seed is None or end <= start:
        return False
    run = memoryview(data)[start * size : end * size]
    return zlib.crc32(run, seed) == seed


@functools.cache
def run_seed(frame_bytes: int) -> int | None:
    """The CRC-32 start value a whole frame of ``frame_bytes`` maps to
    itself (``crc32(frame, seed) == seed``), None if there is none.

    ``crc32(frame, v)`` is affine in ``v`` over GF(2), and the same for
    every whole frame (a body followed by its CRC): the fixed point
    solves a 32-bit linear system, once per frame size.
    """
    body = bytes(frame_bytes - 4)
    frame = body + zlib.crc32(body).to_bytes(4, "little")
    return _fixed_point(lambda v: zlib.crc32(frame, v))


def _fixed_point(f: Callable[[int], int]) -> int | None:
    """The ``v`` with ``f(v) == v`` for an affine ``f`` on 32 bits, by
    Gauss-Jordan elimination of ``(M + I) v = f(0)``; None if singular."""
    base = f(0)
    cols = [f(1 << i) ^ base ^ (1 << i) for i in range(32)]
    rows = [
        sum(((cols[i] >> r) & 1) << i for i in range(32))
        | (((base >> r) & 1) << 32)
        for r in range(32)
    ]
    for col in range(32):
        pivot = next((r for r in range(col, 32) if rows[r] >> col & 1), None)
        if pivot is None:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(32):
            if r != col and rows[r] >> col & 1:
                rows[r] ^= rows[col]
    seed = sum(((rows[i] >> 32) & 1) << i for i in range(32))
    return seed if f(seed) == seed else None


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
