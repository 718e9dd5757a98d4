"""
What became of the records a producer's full ring lanes refused: spilled,
or lost for a reason; counted by the producer in the lane's header, read
by the daemon's status, ``livemon top`` and the health table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ringbuf

LANE_COUNTERS = ("spilled", "spill_cap", "disk_full", "io_error")
"""What the four producer counters of a ring lane count (``RingWriter.
count``, ``LaneState.counters``), of the records its full lane refused:
spilled, or dropped for that reason.  In the ring so the daemon, ``top``
and the health table see them per lane, even when nothing can be written
to disk (the very case they tell of), at one store each, no syscall."""
DROP_REASONS = ("ring_full", "spill_cap", "disk_full", "io_error")
"""Why a record the producer sent was lost, as status and health say."""


def lane_drops(lanes: Sequence[ringbuf.LaneState]) -> dict[str, Any]:
    """What became of the records full lanes refused, from lane headers.

    Every refusal (the lane's ``dropped`` word) was either spilled or
    lost for one reason: the producer counts the spill's outcome in the
    lane's counters (``LANE_COUNTERS``), and what it did not count
    (spilling off, or a producer of a release before spilling) was lost
    to the full ring.  Cumulative, as the lane words are.

    Returns:
        ``refused``, ``spilled``, ``lost`` and each of ``DROP_REASONS``
        in all, and ``lanes``: the same per lane that refused any.
    """
    total = dict.fromkeys(("refused", "spilled", "lost", *DROP_REASONS), 0)
    per_lane = []
    for lane, state in enumerate(lanes):
        if not state.dropped:
            continue
        counted = dict(zip(LANE_COUNTERS, state.counters, strict=True))
        figures = {
            "lane": lane,
            "refused": state.dropped,
            "spilled": counted["spilled"],
            "ring_full": max(0, state.dropped - sum(state.counters)),
            "spill_cap": counted["spill_cap"],
            "disk_full": counted["disk_full"],
            "io_error": counted["io_error"],
        }
        figures["lost"] = sum(figures[r] for r in DROP_REASONS)
        per_lane.append(figures)
        for key in total:
            total[key] += figures[key]
    return {**total, "lanes": per_lane}


def drop_text(figures: dict[str, Any]) -> str:
    """``ring full 3, disk full 2``: the nonzero reasons, or ''."""
    return ", ".join(
        f"{reason.replace('_', ' ')} {figures[reason]:,}"
        for reason in DROP_REASONS
        if figures.get(reason)
    )
