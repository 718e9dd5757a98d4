"""
The spill writer's limits: their defaults, and the checks that turn its
size, cap, interval and mode arguments into a ``Limits``.
"""

from __future__ import annotations

from typing import NamedTuple

from livemon.exceptions import SpillConfigError
from livemon.spill import _format

MiB = 1 << 20
DEFAULT_SEGMENT_BYTES = 4 * MiB
DEFAULT_LANE_CAP_BYTES = 256 * MiB
DEFAULT_TOTAL_CAP_BYTES = 1024 * MiB
DEFAULT_MIN_FREE_BYTES = 128 * MiB  # Aeron's low-storage threshold
DEFAULT_SYNC_INTERVAL_MS = 500  # Vector's flush interval
DEFAULT_RETRY_INTERVAL_MS = 1000
DEFAULT_MODE = 0o600
NEVER_NS = 1 << 62


class Limits(NamedTuple):
    """A writer's checked limits, intervals in nanoseconds."""

    segment_bytes: int
    lane_cap_bytes: int
    total_cap_bytes: int
    min_free_bytes: int
    sync_interval_ns: int
    retry_interval_ns: int
    mode: int


def check_limits(
    frame_bytes: int,
    *,
    segment_bytes: int,
    lane_cap_bytes: int,
    total_cap_bytes: int,
    min_free_bytes: int,
    sync_interval_ms: int | None,
    retry_interval_ms: int,
    mode: int,
) -> Limits:
    """Check a writer's limits, in this order, as ``SpillWriter`` takes them.

    Args:
        frame_bytes: a frame's size; a segment must hold at least one.
        segment_bytes: see ``SpillWriter``, as are the others.
        lane_cap_bytes: most bytes of the lane's files.
        total_cap_bytes: most bytes of all files below the spill root.
        min_free_bytes: free space a new segment must leave (0: none).
        sync_interval_ms: most time between msyncs, None for none.
        retry_interval_ms: wait after a refused segment.
        mode: file permission bits.

    Returns:
        The limits, ``sync_interval_ns`` ``NEVER_NS`` for no msync.

    Raises:
        SpillConfigError: the first argument out of range; fix it.
    """
    low = _format.DATA_OFFSET + frame_bytes
    _format.check_int("segment_bytes", segment_bytes, low, 2**31)
    for what, value in (
        ("lane_cap_bytes", lane_cap_bytes),
        ("total_cap_bytes", total_cap_bytes),
        ("min_free_bytes", min_free_bytes),
    ):
        _format.check_int(what, value, 0, 2**63)
    if sync_interval_ms is None:
        sync_interval_ns = NEVER_NS
    else:
        ms = _format.check_int("sync_interval_ms", sync_interval_ms, 0, 2**31)
        sync_interval_ns = ms * 1_000_000
    retry_interval_ns = 1_000_000 * _format.check_int(
        "retry_interval_ms", retry_interval_ms, 0, 2**31
    )
    _format.check_int("mode", mode, 0, 0o777)
    if mode & 0o600 != 0o600 or mode & 0o117:
        raise SpillConfigError(
            f"mode {mode:#o}: spill files need owner read-write and may "
            "add group read or write, nothing else (e.g. 0o600, 0o640)"
        )
    return Limits(
        segment_bytes,
        lane_cap_bytes,
        total_cap_bytes,
        min_free_bytes,
        sync_interval_ns,
        retry_interval_ns,
        mode,
    )
