"""
The request record and the label record: fixed-width numpy dtypes, and how
text becomes a 64-bit label id.

Unknown values are explicit: NaN for floats, -1 for tri-state flags and
counts, label id 0 for "no text".  Lists are fixed arrays of label ids,
padded with 0.
"""

from __future__ import annotations

import enum
import hashlib
import math
import numbers
import struct
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

MAX_AGENTS = 8
MAX_DOMAINS = 8
MAX_NAME_BYTES = 256
MAX_TEXT_BYTES = 4096
NO_LABEL = 0
UNKNOWN_FLAG = -1
UNKNOWN_COUNT = -1
"""Label texts held for a retry at most; beyond, the oldest is given up."""
TEXT_ERRORS = "backslashreplace"
"""How text that UTF-8 cannot encode (lone surrogates, as ``json.loads``
may return for model output) is stored: as ``\\udXXX`` escapes, so every
``str`` has one valid UTF-8 form and a stable label id."""
MAX_BYTES_PER_CHAR = 6
"""The most bytes one character takes with ``TEXT_ERRORS`` (an escape)."""


class EventType(enum.IntEnum):
    """What a record describes; ``REQUEST`` holds all of one request."""

    REQUEST = 0
    ROUTING = 1
    EXECUTION = 2
    QUALITY = 3


LIST_FIELDS: dict[str, int] = {
    "intent_domains": MAX_DOMAINS,
    "suggested_agents": MAX_AGENTS,
    "actual_agents": MAX_AGENTS,
}

RECORD_DTYPE = np.dtype(
    [
        ("timestamp_ns", "<i8"),
        ("request_id", "<i8"),
        ("pid", "<u4"),
        ("event_type", "<u1"),
        ("query_hash", "<i8"),
        ("query_category", "<i8"),
        ("query_complexity", "<i2"),
        ("intent_category", "<i8"),
        ("routing_strategy", "<i8"),
        ("confidence", "<f8"),
        ("accepted", "<i1"),
        ("override_reason", "<i8"),
        ("execution_time_ms", "<f8"),
        ("success", "<i1"),
        ("error", "<i8"),
        ("quality_score", "<f8"),
        ("task_completed", "<i1"),
        ("code_valid", "<i1"),
        ("tests_passed", "<i1"),
        ("token_count", "<i8"),
        ("context_size_kb", "<f8"),
        ("overhead_ns", "<i8"),
        # Lists last: the hot path appends their cached packed bytes.
        ("intent_domains", "<i8", (MAX_DOMAINS,)),
        ("suggested_agents", "<i8", (MAX_AGENTS,)),
        ("actual_agents", "<i8", (MAX_AGENTS,)),
    ]
)
"""One request (or one stage of it), packed without padding."""

FEEDBACK_DTYPE = np.dtype(
    [
        ("timestamp_ns", "<i8"),
        ("pid", "<u4"),
        ("action", "<u1"),
        ("subject", "<i8"),
        ("old_value", "<f8"),
        ("new_value", "<f8"),
        ("statistic", "<f8"),
        ("threshold", "<f8"),
        ("samples", "<i8"),
        ("window_records", "<i8"),
        ("message", "<i8"),
    ]
)
"""One feedback action or alert, with the statistic behind it.

``subject`` and ``message`` are label ids; ``action`` a ``FeedbackAction``.
"""


class FeedbackAction(enum.IntEnum):
    """What the feedback loop did; ``QUALITY_ALERT`` is stored as an alert."""

    AGENT_CONFIDENCE = 1
    CATEGORY_THRESHOLD = 2
    QUALITY_ALERT = 3
    QUALITY_RECOVERED = 4
    PARALLEL_CAP = 5


ALERT_ACTIONS = (
    FeedbackAction.QUALITY_ALERT,
    FeedbackAction.QUALITY_RECOVERED,
)

MAX_AGENT_RUNS = 16
"""Agent runs one request records at most (``log_agent``); beyond, counted."""


class AgentOutcome(enum.IntEnum):
    """What became of one agent's output (``UNKNOWN``: not said)."""

    UNKNOWN = -1
    SELECTED = 0
    MERGED = 1
    DISCARDED = 2
    CANCELLED = 3  # stopped because a sibling won: censored, not a failure


AGENT_RUN_DTYPE = np.dtype(
    [
        ("timestamp_ns", "<i8"),
        ("request_id", "<i8"),  # links the run to its request's record
        ("pid", "<u4"),
        ("agent", "<i8"),  # label id of the agent's name
        ("outcome", "<i1"),  # an AgentOutcome
        # The request's, copied so the feedback window needs no join.
        ("query_category", "<i8"),
        ("routing_strategy", "<i8"),
        ("execution_time_ms", "<f8"),
        ("success", "<i1"),
        ("error", "<i8"),
        ("input_tokens", "<i8"),
        ("output_tokens", "<i8"),
        ("quality_score", "<f8"),
    ]
)
"""One agent's run within a request, packed without padding.

Unknown values follow the request record's rules: NaN, -1, label id 0.
"""

LABEL_DTYPE = np.dtype(
    [
        ("label_id", "<i8"),
        ("length", "<u2"),
        ("text", "u1", (MAX_TEXT_BYTES,)),
    ]
)
"""The text behind a label id, UTF-8, ``length`` bytes of ``text``."""

_STRUCT_CODES = {
    "i8": "q",
    "u4": "I",
    "u1": "B",
    "i2": "h",
    "f8": "d",
    "i1": "b",
}


def struct_for(dtype: np.dtype[np.void]) -> struct.Struct:
    """A ``struct.Struct`` that packs a flat tuple into ``dtype``'s bytes."""
    codes = []
    for name in dtype.names or ():
        field = dtype.fields[name][0]  # type: ignore[index]
        base, shape = field.base, field.shape
        count = int(np.prod(shape)) if shape else 1
        codes.append(f"{count}{_STRUCT_CODES[base.str[1:]]}")
    return struct.Struct("<" + "".join(codes))


_SCALAR_FIELDS = [n for n in RECORD_DTYPE.names or () if n not in LIST_FIELDS]
SCALARS_STRUCT = struct_for(RECORD_DTYPE[_SCALAR_FIELDS])
"""Packs the scalar fields, in order; the three id lists follow as bytes.

Measured here: packing with ``struct`` takes ~1.3 us where assigning the
same tuple to a numpy record takes ~4.5 us, so the hot path packs bytes
laid out exactly as ``RECORD_DTYPE`` (a test holds the two together).
"""

_ID_BYTES = 8  # one little-endian int64 label id
LIST_STRUCTS = {n: struct.Struct(f"<{n}q") for n in (MAX_AGENTS, MAX_DOMAINS)}
"""Packs one padded list of label ids."""


def _check_layout() -> None:
    """Refuse to import a record layout the hot path would pack wrongly.

    Raised explicitly, not asserted: ``python -O`` must not skip it.
    """
    if list(RECORD_DTYPE.names or ())[-3:] != list(LIST_FIELDS):
        raise ImportError("RECORD_DTYPE must end with the LIST_FIELDS lists")
    list_bytes = _ID_BYTES * sum(LIST_FIELDS.values())
    if SCALARS_STRUCT.size + list_bytes != RECORD_DTYPE.itemsize:
        raise ImportError("SCALARS_STRUCT and RECORD_DTYPE sizes disagree")


_check_layout()


def encode_text(text: str) -> bytes:
    """Return the UTF-8 bytes stored for ``text`` (see ``TEXT_ERRORS``)."""
    return text.encode("utf-8", TEXT_ERRORS)


def is_encodable(text: str) -> bool:
    """Whether ``text`` is stored as it is (it holds no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def label_id(text: str) -> int:
    """Return the stable, non-zero signed 64-bit id of ``text``."""
    digest = hashlib.blake2b(encode_text(text), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


_LIST_PERSON = b"livemon-list"  # the hash domain of list ids


def list_label_id(ids: Iterable[int]) -> int:
    """Return the id under which a list of label ids is stored as one label.

    The database keeps each distinct list once, as a JSON array of its
    texts; its id depends on the ids alone (in order, zeros ignored) and
    lives in a hash domain of its own, apart from text ids.
    """
    data = b"".join(i.to_bytes(8, "little", signed=True) for i in ids if i)
    if not data:
        return NO_LABEL
    digest = hashlib.blake2b(data, digest_size=8, person=_LIST_PERSON)
    return int.from_bytes(digest.digest(), "little", signed=True) or 1


def fit_text(text: str, limit_bytes: int = MAX_TEXT_BYTES) -> str:
    """Return ``text``, or a prefix with a visible marker if it is too long.

    The result encodes (``encode_text``) to at most ``limit_bytes``.
    """
    if len(text) * MAX_BYTES_PER_CHAR <= limit_bytes:
        return text
    data = encode_text(text)
    if len(data) <= limit_bytes:
        return text
    marker = f"...[truncated, {len(data)} bytes in all]"
    keep = limit_bytes - len(marker.encode())
    return data[:keep].decode(errors="ignore") + marker


def label_record(text: str) -> bytes:
    """Return a packed ``LABEL_DTYPE`` record for a text that fits."""
    data = encode_text(text)
    return _LABEL_HEAD.pack(label_id(text), len(data)) + data.ljust(
        MAX_TEXT_BYTES, b"\0"
    )


_LABEL_HEAD = struct.Struct("<qH")


def label_texts(records: npt.NDArray[np.void]) -> list[tuple[int, str]]:
    """Turn ``LABEL_DTYPE`` records into ``(label_id, text)`` pairs.

    Bytes that are not UTF-8 (a damaged record) become U+FFFD rather
    than an error: one bad label must not stop a reader.
    """
    return [
        (label, text[:length].tobytes().decode(errors="replace"))
        for label, length, text in zip(
            records["label_id"].tolist(),
            records["length"].tolist(),
            records["text"],
            strict=True,
        )
    ]


# -- field values: what each kind of field accepts ---------------------


def is_bool(value: object) -> bool:
    """Whether ``value`` is a bool (Python's or numpy's)."""
    return type(value) is bool or isinstance(value, np.bool_)


def flag_value(value: object) -> int | None:
    """The stored tri-state flag for ``value``; None if it is not one.

    Accepted: None (unknown), ``True``/``False``, ``np.bool_``, and
    integers equal to 0 or 1.
    """
    if value is None:
        return UNKNOWN_FLAG
    if is_bool(value):
        return int(bool(value))
    number = _integer(value)
    return number if number in (0, 1) else None


def count_value(value: object, high: int) -> int | None:
    """The stored count for ``value`` (None: unknown); None if refused.

    Accepted: any ``numbers.Integral`` but a bool, in ``0..high``.
    """
    if value is None:
        return UNKNOWN_COUNT
    number = None if is_bool(value) else _integer(value)
    return number if number is not None and 0 <= number <= high else None


def number_value(value: object, high: float) -> float | None:
    """The stored float for ``value`` (None: NaN); None if refused.

    Accepted: any ``numbers.Real`` but a bool, finite, in ``[0, high]``.
    """
    if value is None:
        return math.nan
    if not isinstance(value, numbers.Real) or is_bool(value):
        return None
    try:
        number = float(value)
    except Exception:  # a hostile __float__: refused, never raised
        return None
    return number if 0 <= number <= high and number != math.inf else None


def _integer(value: object) -> int | None:
    if not isinstance(value, numbers.Integral):
        return None
    try:
        return int(value)
    except Exception:  # a hostile __int__: refused, never raised
        return None
