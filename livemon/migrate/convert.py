"""
How a chunk of legacy rows becomes unified records, column by column with
numpy, and why each rejected row was rejected.
"""

from __future__ import annotations

import datetime
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.context import query_hash
from livemon.migrate.legacy import Layout
from livemon.record import (
    LIST_FIELDS,
    MAX_NAME_BYTES,
    NO_LABEL,
    RECORD_DTYPE,
    fit_text,
    label_id,
)

Reject = Callable[[Any, str], None]
"""Marks a row (an index) or rows (a boolean mask) rejected, with a reason."""

_LABEL_FIELDS = (  # (field, a name rather than free text?)
    ("query_category", True),
    ("intent_category", True),
    ("routing_strategy", True),
    ("override_reason", False),
    ("error", False),
)
_NUMBER_FIELDS = (  # (field, highest value allowed)
    ("confidence", 1.0),
    ("quality_score", 1.0),
    ("execution_time_ms", math.inf),
    ("context_size_kb", math.inf),
)
_FLAG_FIELDS = (
    "accepted",
    "success",
    "task_completed",
    "code_valid",
    "tests_passed",
)


class ChunkConverter:
    """Turns a chunk of legacy rows into records, one column at a time.

    Each column is converted with numpy where its values allow (numbers,
    ISO timestamps) and value by value otherwise; texts and lists are
    converted once per distinct value.  A row with any bad value is
    rejected with the first reason found.  Collects the label texts met.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.labels: dict[int, str] = {}  # new since the caller took them
        self.texts: dict[int, str] = {}  # every label id met -> its text
        self._ids: dict[tuple[bool, Any], int] = {}  # (name?, value) -> id
        self._lists: dict[tuple[str, Any], npt.NDArray[np.int64] | str] = {}

    def convert(
        self, rowids: Sequence[int], columns: dict[str, Sequence[Any]]
    ) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int64], dict[int, str]]:
        """Return the good rows' records and rowids, and the reason each
        rejected row was rejected (row index -> reason; the rows kept are
        not in it).

        Args:
            rowids: the rows' rowids, in order.
            columns: unified field -> the rows' values (absent: unknown).
        """
        n = len(rowids)
        reasons: dict[int, str] = {}
        rejected = np.zeros(n, bool)
        ids = np.fromiter(rowids, np.int64, n)
        records = np.zeros(n, RECORD_DTYPE)
        records["request_id"] = ids
        records["event_type"] = int(self.layout.event_type)

        def reject(bad: int | npt.NDArray[np.bool_], reason: str) -> None:
            """Reject row ``bad``, or the rows the mask ``bad`` marks."""
            rows = [bad] if isinstance(bad, int) else np.flatnonzero(bad)
            for i in rows:
                reasons.setdefault(int(i), reason)
            rejected[rows] = True

        for field in self.layout.required:
            values = columns.get(field)
            if values is None:
                reject(np.ones(n, bool), f"missing {field}")
            elif _has_missing(values):
                reject(
                    np.array([v is None or v == "" for v in values]),
                    f"missing {field}",
                )
        self._fill(records, columns, reject)
        if not reasons:  # the usual chunk: nothing to take out
            return records, ids, reasons
        good = ~rejected
        raw = np.dtype(f"V{RECORD_DTYPE.itemsize}")
        kept = records.view(raw)[good].view(RECORD_DTYPE)  # memcpy
        return kept, ids[good], reasons

    def _fill(
        self,
        records: npt.NDArray[np.void],
        columns: dict[str, Sequence[Any]],
        reject: Reject,
    ) -> None:
        """Convert each column present into its field of ``records``.

        An absent column leaves its fields unknown, set without looking
        at n values (the zeros of np.zeros are no label / no list).
        """
        records["timestamp_ns"] = _timestamps(columns["timestamp"], reject)
        if "query_hash" in columns:
            records["query_hash"] = _query_hashes(columns["query_hash"])
        for field, name in _LABEL_FIELDS:
            if field in columns:
                values = columns[field]
                records[field] = self._labels(field, values, reject, name)
        for field, high in _NUMBER_FIELDS:
            records[field] = (
                _numbers(field, columns[field], high, reject)
                if field in columns
                else np.nan
            )
        for field in _FLAG_FIELDS:
            records[field] = (
                _flags(field, columns[field], reject)
                if field in columns
                else -1
            )
        records["token_count"] = (
            _counts("token_count", columns["token_count"], reject)
            if "token_count" in columns
            else -1
        )
        records["query_complexity"] = -1
        for field, size in LIST_FIELDS.items():
            if field in columns:
                values = columns[field]
                records[field] = self._list(field, values, size, reject)

    def _labels(
        self, field: str, values: Sequence[Any], reject: Reject, name: bool
    ) -> npt.NDArray[np.int64]:
        # Texts repeat: each distinct value is converted once.
        distinct = {
            value: self._cached_label(field, value, name)
            for value in set(values)
        }
        return _rejecting(values, distinct, 0, reject)

    def _cached_label(self, field: str, value: Any, name: bool) -> int | str:
        cached = self._ids.get((name, value))
        return self._label_of(field, value, name) if cached is None else cached

    def _label_of(self, field: str, value: Any, name: bool) -> int | str:
        if value is None or value == "":
            return NO_LABEL
        if name and (
            not isinstance(value, str) or len(value.encode()) > MAX_NAME_BYTES
        ):
            return f"{field} is not a name of at most {MAX_NAME_BYTES} bytes"
        text = value if name else fit_text(str(value))
        label = label_id(text)
        if label not in self.texts:
            self.texts[label] = self.labels[label] = text
        if isinstance(value, str):
            self._ids[(name, value)] = label
        return label

    def _list(
        self, field: str, values: Sequence[Any], size: int, reject: Reject
    ) -> npt.NDArray[np.int64]:
        distinct = {}
        for value in set(values):
            key = (field, value)
            row = self._lists.get(key)
            if row is None:
                row = self._lists[key] = self._parse_list(field, value, size)
            distinct[value] = row
        return _rejecting(values, distinct, np.zeros(size, np.int64), reject)

    def _parse_list(
        self, field: str, value: Any, size: int
    ) -> npt.NDArray[np.int64] | str:
        if value is None or value == "":
            return np.zeros(size, np.int64)
        if field in self.layout.single_names:
            names: Any = [value]
        else:
            try:
                names = json.loads(value)
            except (TypeError, ValueError):
                return f"{field} is not a JSON array"
        if not isinstance(names, list) or len(names) > size:
            return f"{field} must list at most {size} names"
        ids = [self._label_of(field, n, True) for n in names]
        if any(isinstance(i, str) for i in ids):
            return f"{field} holds a bad name"
        return np.array([*ids, *[NO_LABEL] * (size - len(ids))], np.int64)


def _rejecting(
    values: Sequence[Any],
    distinct: dict[Any, Any],
    instead: Any,
    reject: Reject,
) -> npt.NDArray[np.int64]:
    """Each value's conversion from ``distinct`` (an id, or a row of ids),
    as one array; where that is a reason (a str), reject the row and put
    ``instead``.

    Each value is numbered by its distinct value and the conversions
    taken by those numbers at once: no array per row.
    """
    keys = list(distinct)
    conversions = [distinct[key] for key in keys]
    table = np.array(
        [instead if isinstance(c, str) else c for c in conversions], np.int64
    ).reshape(len(keys), *np.shape(instead))
    number = {key: i for i, key in enumerate(keys)}
    codes = np.fromiter(map(number.__getitem__, values), np.intp, len(values))
    bad = {i: c for i, c in enumerate(conversions) if isinstance(c, str)}
    if bad:
        for row in np.flatnonzero(np.isin(codes, list(bad))).tolist():
            reject(row, bad[int(codes[row])])
    return table[codes]


def _has_missing(values: Sequence[Any]) -> bool:
    """Whether any value is None or empty text: C-speed scans (the types
    first, so a column of numbers is not compared with "" value by
    value)."""
    kinds = set(map(type, values))
    return type(None) in kinds or (str in kinds and "" in values)


def _timestamps(
    values: Sequence[Any], reject: Reject
) -> npt.NDArray[np.int64]:
    """ISO texts (UTC unless an offset is given) or Unix seconds, in ns."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # offsets: numpy warns, we parse
            kinds = set(map(type, values))
            if kinds == {str}:
                parsed = np.array(values, dtype="datetime64[us]")
                return parsed.astype(np.int64) * 1000
            if all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in values
            ):
                seconds = np.array(values, dtype=np.float64)
                if ((seconds > 0) & (seconds < 2**33)).all():
                    return (seconds * 1e9).astype(np.int64)
    except (ValueError, TypeError, DeprecationWarning):
        pass  # some value is not plain: one by one below
    result = np.zeros(len(values), np.int64)
    for i, value in enumerate(values):
        stamp = _timestamp_ns(value)
        if stamp is None:
            reject(i, "bad timestamp")
        else:
            result[i] = stamp
    return result


def _timestamp_ns(value: Any) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1e9) if 0 < value < 2**33 else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1e6) * 1000


_NUMBER_TYPES = {int, float, type(None)}


def _as_floats(
    field: str, values: Sequence[Any], reject: Reject
) -> npt.NDArray[np.float64]:
    if set(map(type, values)) <= _NUMBER_TYPES:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    numbers = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if type(value) in _NUMBER_TYPES:
            numbers[i] = np.nan if value is None else value
        else:
            reject(i, f"{field} is not a number")
    return numbers


def _numbers(
    field: str, values: Sequence[Any], high: float, reject: Reject
) -> npt.NDArray[np.float64]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | (
        (numbers >= 0) & (numbers <= high) & (numbers != np.inf)
    )
    reject(~ok, f"{field} out of range")
    return np.where(ok, numbers, np.nan)


def _flags(
    field: str, values: Sequence[Any], reject: Reject
) -> npt.NDArray[np.int8]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | (numbers == 0) | (numbers == 1)
    reject(~ok, f"{field} is not 0, 1 or NULL")
    return np.where(np.isnan(numbers) | ~ok, -1, numbers).astype(np.int8)


def _counts(
    field: str, values: Sequence[Any], reject: Reject
) -> npt.NDArray[np.int64]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | ((numbers >= 0) & (numbers == np.round(numbers)))
    reject(~ok, f"{field} is not a count")
    return np.where(np.isnan(numbers) | ~ok, -1, numbers).astype(np.int64)


def _query_hashes(values: Sequence[Any]) -> npt.NDArray[np.int64] | list[int]:
    """Each value's query hash: 64-bit hex as its bits, anything else
    hashed.  Plain hex (the legacy loggers' form, 16 digits) is parsed in
    one pass over the chunk's text; any other value sends the chunk
    through ``_query_hash`` one by one."""
    parsed = _hex64(values)
    return [_query_hash(v) for v in values] if parsed is None else parsed


def _hex64(values: Sequence[Any]) -> npt.NDArray[np.int64] | None:
    """Texts of exactly 16 hex digits each, as the int64 of their bits
    (None if any value is not): one ``bytes.fromhex`` of them joined.
    Whitespace, which ``fromhex`` skips, would leave fewer than 8 bytes a
    value, so the length check refuses it."""
    if set(map(type, values)) != {str} or set(map(len, values)) != {16}:
        return None
    try:
        raw = bytes.fromhex("".join(values))
    except ValueError:
        return None
    if len(raw) != 8 * len(values):
        return None
    return np.frombuffer(raw, ">i8").astype(np.int64)


def _query_hash(value: Any) -> int:
    if value is None:
        return 0
    text = str(value)
    try:
        raw = int(text, 16)
    except ValueError:
        return query_hash(text)  # not hex: hash whatever it is
    if raw >= 2**64:
        return query_hash(text)
    return raw - 2**64 if raw >= 2**63 else raw
