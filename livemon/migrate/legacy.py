"""
The three legacy databases livemon understands: their tables, columns and
a user-given mapping, and the identity epoch of their rows.

Layouts and their mapping are documented in docs/migration.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from typing import Any

from livemon.config_file import read_regular
from livemon.exceptions import LegacyError
from livemon.record import (
    EventType,
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
        agent_runs: each row is one agent's run, stored in ``agent_runs``
            too (the seed's per-agent performance log).
    """

    kind: str
    table: str
    event_type: EventType
    columns: Mapping[str, str]
    required: tuple[str, ...]
    lane: int
    single_names: tuple[str, ...] = ()
    agent_runs: bool = False


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
        agent_runs=True,
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
        data = tomllib.loads(read_regular(path).decode())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
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
