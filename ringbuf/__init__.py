"""
A multi-producer shared-memory ring of fixed-width numpy records.
"""

from __future__ import annotations

from ringbuf._compiled import PURE_PYTHON_ENV, compiled_allowed
from ringbuf._layout import (
    MAX_CAPACITY_RECORDS,
    MAX_LANES,
    dtype_fingerprint,
    validate_name,
)
from ringbuf.exceptions import (
    LaneIndexError,
    LanesExhausted,
    RecordDtypeError,
    RingArgumentError,
    RingArgumentTypeError,
    RingClosed,
    RingCorrupt,
    RingError,
    RingExists,
    RingNameError,
    RingNotFound,
    RingUntrusted,
    UnsupportedPlatform,
)
from ringbuf.ring import Batch, LaneState, Ring, Window, unlink
from ringbuf.writer import RingWriter

__all__ = [
    "MAX_CAPACITY_RECORDS",
    "MAX_LANES",
    "PURE_PYTHON_ENV",
    "Batch",
    "LaneIndexError",
    "LaneState",
    "LanesExhausted",
    "RecordDtypeError",
    "Ring",
    "RingArgumentError",
    "RingArgumentTypeError",
    "RingClosed",
    "RingCorrupt",
    "RingError",
    "RingExists",
    "RingNameError",
    "RingNotFound",
    "RingUntrusted",
    "RingWriter",
    "UnsupportedPlatform",
    "Window",
    "compiled_allowed",
    "dtype_fingerprint",
    "unlink",
    "validate_name",
]
