"""
The three legacy databases livemon understands, and how one of their rows
becomes a unified record (or is rejected, with the reason).

Layouts and their mapping are documented in docs/migration.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import tomllib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.context import query_hash
from livemon.exceptions import LegacyError
from livemon.record import (
    LIST_FIELDS,
    MAX_NAME_BYTES,
    NO_LABEL,
    RECORD_DTYPE,
    EventType,
    fit_text,
    label_id,
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One legacy table: where it is, which unified field each column feeds.

    Attributes:
        kind: ``routing``, ``quality`` or ``performance``.
        table: the legacy table's name.
        event_type: the unified event type its rows become.
        columns: unified field -> legacy column.
        required: unified fields a row cannot do without.
        lane: the identity lane its rows get (one per kind).
        single_names: list fields whose column holds one name, not JSON.
    """

    kind: str
    table: str
    event_type: EventType
    columns: Mapping[str, str]
    required: tuple[str, ...]
    lane: int
    single_names: tuple[str, ...] = ()


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


LAYOUTS: dict[str, Layout] = {
    "routing": Layout(
        "routing",
        "routing_decisions",
        EventType.ROUTING,
        _same(
            "timestamp",
            "query_hash",
            "query_category",
            "intent_category",
            "intent_domains",
            "suggested_agents",
            "routing_strategy",
            "confidence",
            "actual_agents",
            "accepted",
            "override_reason",
        ),
        ("timestamp", "suggested_agents"),
        1,
    ),
    "quality": Layout(
        "quality",
        "quality_metrics",
        EventType.QUALITY,
        _same(
            "timestamp",
            "query_hash",
            "query_category",
            "quality_score",
            "task_completed",
            "code_valid",
            "tests_passed",
        ),
        ("timestamp", "quality_score"),
        2,
    ),
    "performance": Layout(
        "performance",
        "agent_performance",
        EventType.EXECUTION,
        {
            **_same(
                "timestamp",
                "query_hash",
                "execution_time_ms",
                "success",
                "error",
                "token_count",
                "context_size_kb",
            ),
            "actual_agents": "agent_name",
        },
        ("timestamp", "actual_agents", "execution_time_ms"),
        3,
        single_names=("actual_agents",),
    ),
}


def load_mapping(path: str) -> dict[str, Layout]:
    """The layouts, with table and column names overridden from TOML.

    The file has one table per kind, e.g.::

        [performance]
        table = "perf_log"
        [performance.columns]
        actual_agents = "agent"
        execution_time_ms = "duration_ms"

    Raises:
        LegacyError: unreadable file, unknown kind or unified field.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LegacyError(f"mapping file {path}: {exc}") from exc
    layouts = dict(LAYOUTS)
    for kind, spec in data.items():
        if kind not in LAYOUTS or not isinstance(spec, dict):
            raise LegacyError(
                f"mapping file {path}: unknown section [{kind}]; use "
                f"{sorted(LAYOUTS)}"
            )
        base = LAYOUTS[kind]
        columns = dict(base.columns)
        for field, column in spec.get("columns", {}).items():
            if field not in base.columns or not isinstance(column, str):
                raise LegacyError(
                    f"mapping file {path}: [{kind}.columns] {field!r} is not "
                    f"a field of {kind} rows ({sorted(base.columns)})"
                )
            columns[field] = column
        layouts[kind] = dataclasses.replace(
            base, table=str(spec.get("table", base.table)), columns=columns
        )
    return layouts


def legacy_epoch(
    layout: Layout, table_sql: str, first_row: tuple[Any, ...]
) -> int:
    """A stable identity epoch for one legacy table's rows.

    It depends on the table's definition and first row, not on where the
    file lies, so migrating a moved copy adds nothing twice.
    """
    text = f"{layout.kind}|{table_sql}|{first_row!r}"
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"legacy")
    return int.from_bytes(digest.digest(), "little") >> 1


Reject = Callable[[Any, str], None]
"""Marks a row (an index) or rows (a boolean mask) rejected, with a reason."""


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
        self, rowids: list[int], columns: dict[str, list[Any]]
    ) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int64], list[str | None]]:
        """Return the good rows' records and rowids, and each row's reason
        for rejection (None when it was kept).

        Args:
            rowids: the rows' rowids, in order.
            columns: unified field -> the rows' values (absent: unknown).
        """
        n = len(rowids)
        reasons: list[str | None] = [None] * n
        records = np.zeros(n, RECORD_DTYPE)
        records["request_id"] = rowids
        records["event_type"] = int(self.layout.event_type)

        def reject(bad: int | npt.NDArray[np.bool_], reason: str) -> None:
            """Reject row ``bad``, or the rows the mask ``bad`` marks."""
            rows = [bad] if isinstance(bad, int) else np.flatnonzero(bad)
            for i in rows:
                if reasons[i] is None:
                    reasons[i] = reason

        for field in self.layout.required:
            values = columns.get(field, [None] * n)
            reject(
                np.array([v is None or v == "" for v in values]),
                f"missing {field}",
            )
        unknown: list[Any] = [None] * n

        def get(field: str) -> list[Any]:
            return columns.get(field, unknown)

        records["timestamp_ns"] = _timestamps(get("timestamp"), reject)
        records["query_hash"] = [_query_hash(v) for v in get("query_hash")]
        for field in ("query_category", "intent_category", "routing_strategy"):
            records[field] = self._labels(field, get(field), reject, name=True)
        for field in ("override_reason", "error"):
            records[field] = self._labels(
                field, get(field), reject, name=False
            )
        for field, high in (
            ("confidence", 1.0),
            ("quality_score", 1.0),
            ("execution_time_ms", math.inf),
            ("context_size_kb", math.inf),
        ):
            records[field] = _numbers(field, get(field), high, reject)
        for field in (
            "accepted",
            "success",
            "task_completed",
            "code_valid",
            "tests_passed",
        ):
            records[field] = _flags(field, get(field), reject)
        records["token_count"] = _counts(
            "token_count", get("token_count"), reject
        )
        records["query_complexity"] = -1
        for field, size in LIST_FIELDS.items():
            records[field] = self._list(field, get(field), size, reject)
        good = np.array([r is None for r in reasons], bool)
        raw = np.dtype(f"V{RECORD_DTYPE.itemsize}")
        kept = records.view(raw)[good].view(
            RECORD_DTYPE
        )  # memcpy, not per field
        return kept, np.asarray(rowids, np.int64)[good], reasons

    def _labels(
        self, field: str, values: list[Any], reject: Reject, *, name: bool
    ) -> npt.NDArray[np.int64]:
        # Texts repeat: each distinct value is converted once.
        distinct = {
            value: self._cached_label(field, value, name)
            for value in set(values)
        }
        return np.array(_rejecting(values, distinct, 0, reject), np.int64)

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
        self, field: str, values: list[Any], size: int, reject: Reject
    ) -> npt.NDArray[np.int64]:
        distinct = {}
        for value in set(values):
            key = (field, value)
            row = self._lists.get(key)
            if row is None:
                row = self._lists[key] = self._parse_list(field, value, size)
            distinct[value] = row
        rows = _rejecting(values, distinct, np.zeros(size, np.int64), reject)
        return np.array(rows, np.int64).reshape(len(values), size)

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
    values: list[Any], distinct: dict[Any, Any], instead: Any, reject: Reject
) -> list[Any]:
    """Each value's conversion from ``distinct``; where that is a reason
    (a str), reject the row and put ``instead``."""
    reasons = {v: d for v, d in distinct.items() if isinstance(d, str)}
    if not reasons:
        return [distinct[v] for v in values]
    for i, value in enumerate(values):
        if value in reasons:
            reject(i, reasons[value])
    return [instead if v in reasons else distinct[v] for v in values]


def _timestamps(values: list[Any], reject: Reject) -> npt.NDArray[np.int64]:
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
    field: str, values: list[Any], reject: Reject
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
    field: str, values: list[Any], high: float, reject: Reject
) -> npt.NDArray[np.float64]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | (
        (numbers >= 0) & (numbers <= high) & (numbers != np.inf)
    )
    reject(~ok, f"{field} out of range")
    return np.where(ok, numbers, np.nan)


def _flags(
    field: str, values: list[Any], reject: Reject
) -> npt.NDArray[np.int8]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | (numbers == 0) | (numbers == 1)
    reject(~ok, f"{field} is not 0, 1 or NULL")
    return np.where(np.isnan(numbers) | ~ok, -1, numbers).astype(np.int8)


def _counts(
    field: str, values: list[Any], reject: Reject
) -> npt.NDArray[np.int64]:
    numbers = _as_floats(field, values, reject)
    ok = np.isnan(numbers) | ((numbers >= 0) & (numbers == np.round(numbers)))
    reject(~ok, f"{field} is not a count")
    return np.where(np.isnan(numbers) | ~ok, -1, numbers).astype(np.int64)


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
