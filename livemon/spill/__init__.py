"""
Spill files: a full ring lane's records taken to disk by its producer
(``SpillWriter``) and replayed by the daemon (``SpillReader``).
"""

from __future__ import annotations

from livemon.exceptions import (
    SpillConfigError,
    SpillDirError,
    SpillDtypeError,
)
from livemon.spill._files import Segment
from livemon.spill._limits import (
    DEFAULT_LANE_CAP_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_SEGMENT_BYTES,
    DEFAULT_SYNC_INTERVAL_MS,
    DEFAULT_TOTAL_CAP_BYTES,
)
from livemon.spill._status import SpillStatus
from livemon.spill.lane import (
    SPILL_LANE_BASE,
    LaneSpill,
    default_spill_dir,
    resume_seq,
    spill_lane,
)
from livemon.spill.reader import Backlog, Scan, SpillReader
from livemon.spill.writer import SpillWriter

__all__ = [
    "DEFAULT_LANE_CAP_BYTES",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SYNC_INTERVAL_MS",
    "DEFAULT_TOTAL_CAP_BYTES",
    "SPILL_LANE_BASE",
    "Backlog",
    "LaneSpill",
    "Scan",
    "Segment",
    "SpillConfigError",
    "SpillDirError",
    "SpillDtypeError",
    "SpillReader",
    "SpillStatus",
    "SpillWriter",
    "default_spill_dir",
    "resume_seq",
    "spill_lane",
]
