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
from collections.abc import Mapping
from typing import Any

from livemon.context import query_hash
from livemon.exceptions import LegacyError
from livemon.record import (
    LIST_FIELDS,
    LIST_STRUCTS,
    MAX_NAME_BYTES,
    NO_LABEL,
    SCALARS_STRUCT,
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


class Rejected(ValueError):
    """A legacy row that cannot be migrated; the message is the reason."""


class RowConverter:
    """Turns legacy rows (dicts of unified field -> value) into records.

    Collects the label texts it meets, to be stored with the records.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.labels: dict[int, str] = {}  # new since the caller took them
        self._ids: dict[str, int] = {}
        self._lists: dict[tuple[str, Any], bytes] = {}

    def convert(self, rowid: int, row: dict[str, Any]) -> bytes:
        """Pack one row as RECORD_DTYPE bytes.

        Raises:
            Rejected: a missing required field or an invalid value.
        """
        for field in self.layout.required:
            if row.get(field) is None:
                raise Rejected(f"missing {field}")
        get = row.get
        scalars = (
            _timestamp_ns(get("timestamp")),
            rowid,
            0,
            int(self.layout.event_type),
            _query_hash(get("query_hash")),
            self._name("query_category", get("query_category")),
            -1,
            self._name("intent_category", get("intent_category")),
            self._name("routing_strategy", get("routing_strategy")),
            _number("confidence", get("confidence"), 1.0),
            _flag("accepted", get("accepted")),
            self._text(get("override_reason")),
            _number("execution_time_ms", get("execution_time_ms"), math.inf),
            _flag("success", get("success")),
            self._text(get("error")),
            _number("quality_score", get("quality_score"), 1.0),
            _flag("task_completed", get("task_completed")),
            _flag("code_valid", get("code_valid")),
            _flag("tests_passed", get("tests_passed")),
            _count("token_count", get("token_count")),
            _number("context_size_kb", get("context_size_kb"), math.inf),
            0,
        )
        return SCALARS_STRUCT.pack(*scalars) + b"".join(
            [self._packed_list(field, get(field)) for field in LIST_FIELDS]
        )

    def _packed_list(self, field: str, value: Any) -> bytes:
        # Lists repeat (a few combinations of agents): parse each once.
        key = (field, value)
        packed = self._lists.get(key)
        if packed is None:
            size = LIST_FIELDS[field]
            packed = LIST_STRUCTS[size].pack(*self._names(field, value, size))
            self._lists[key] = packed
        return packed

    def _name(self, field: str, value: Any) -> int:
        if value is None or value == "":
            return NO_LABEL
        if not isinstance(value, str) or len(value.encode()) > MAX_NAME_BYTES:
            raise Rejected(
                f"{field} is not a name of at most {MAX_NAME_BYTES} bytes"
            )
        return self._label(value)

    def _text(self, value: Any) -> int:
        if value is None or value == "":
            return NO_LABEL
        return self._label(fit_text(str(value)))

    def _names(self, field: str, value: Any, size: int) -> list[int]:
        if value is None or value == "":
            names: list[Any] = []
        elif field in self.layout.single_names:
            names = [value]
        else:
            try:
                names = json.loads(value)
            except (TypeError, ValueError):
                raise Rejected(f"{field} is not a JSON array") from None
        if not isinstance(names, list) or len(names) > size:
            raise Rejected(f"{field} must list at most {size} names")
        ids = [self._name(field, name) for name in names]
        return ids + [NO_LABEL] * (size - len(ids))

    def _label(self, text: str) -> int:
        label = self._ids.get(text)
        if label is None:
            label = self._ids[text] = label_id(text)
            self.labels[label] = text
        return label


def _timestamp_ns(value: Any) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and 0 < value < 2**33:
            return int(value * 1e9)
        raise Rejected(f"bad timestamp {value!r}")
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise Rejected(f"bad timestamp {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)  # SQLite's habit
        return int(moment.timestamp() * 1e6) * 1000
    raise Rejected(f"bad timestamp {value!r}")


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


def _number(field: str, value: Any, high: float) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"{field} is not a number: {value!r}")
    if not (0 <= value <= high and value != math.inf):
        raise Rejected(f"{field} out of range: {value!r}")
    return float(value)


def _flag(field: str, value: Any) -> int:
    if value is None:
        return -1
    if value in (0, 1) and not isinstance(value, float):
        return int(value)
    raise Rejected(f"{field} is not 0, 1 or NULL: {value!r}")


def _count(field: str, value: Any) -> int:
    if value is None:
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise Rejected(f"{field} is not a count: {value!r}")
