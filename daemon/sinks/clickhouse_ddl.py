"""
The ClickHouse tables the sink creates: modern DDL (LowCardinality,
DateTime64, a TTL of 90 days after arrival) and a variant for servers
before 20.1.

Both are ReplacingMergeTree tables ordered by (host, epoch, lane, seq):
a batch shipped twice collapses to one row, so ``FINAL`` (or a query
grouping by that key) counts every event exactly once.
"""

from __future__ import annotations

import dataclasses

MODERN_SINCE = (20, 1)
"""The first server version with DateTime64 (TTL and LowCardinality came
in 19.x): older ones get the compatible DDL."""

TTL_DAYS = 90

# (name, modern type, compatible type); the identity and host come first.
_IDENTITY = [
    ("host", "LowCardinality(String)", "String"),
    ("epoch", "Int64", "Int64"),
    ("lane", "Int32", "Int32"),
    ("seq", "Int64", "Int64"),
    ("id", "Int64", "Int64"),  # the row's id in its host's outbox
    ("request_id", "Int64", "Int64"),
    ("timestamp_ns", "Int64", "Int64"),
]
_TEXT = ("LowCardinality(Nullable(String))", "Nullable(String)")
_LIST = ("Array(LowCardinality(String))", "Array(String)")
_EVENTS = [
    ("event_type", "LowCardinality(String)", "String"),
    ("query_hash", "String", "String"),
    ("query_category", *_TEXT),
    ("query_complexity", "Nullable(Int16)", "Nullable(Int16)"),
    ("intent_category", *_TEXT),
    ("intent_domains", *_LIST),
    ("suggested_agents", *_LIST),
    ("routing_strategy", *_TEXT),
    ("confidence", "Nullable(Float64)", "Nullable(Float64)"),
    ("actual_agents", *_LIST),
    ("accepted", "Nullable(Int8)", "Nullable(Int8)"),
    ("override_reason", *_TEXT),
    ("execution_time_ms", "Nullable(Float64)", "Nullable(Float64)"),
    ("success", "Nullable(Int8)", "Nullable(Int8)"),
    ("error", *_TEXT),
    ("quality_score", "Nullable(Float64)", "Nullable(Float64)"),
    ("task_completed", "Nullable(Int8)", "Nullable(Int8)"),
    ("code_valid", "Nullable(Int8)", "Nullable(Int8)"),
    ("tests_passed", "Nullable(Int8)", "Nullable(Int8)"),
    ("token_count", "Nullable(Int64)", "Nullable(Int64)"),
    ("context_size_kb", "Nullable(Float64)", "Nullable(Float64)"),
]
_AGENT_RUNS = [
    ("pid", "UInt32", "UInt32"),
    ("agent", *_TEXT),
    ("outcome", *_TEXT),
    ("query_category", *_TEXT),
    ("routing_strategy", *_TEXT),
    ("execution_time_ms", "Nullable(Float64)", "Nullable(Float64)"),
    ("success", "Nullable(Int8)", "Nullable(Int8)"),
    ("error", *_TEXT),
    ("input_tokens", "Nullable(Int64)", "Nullable(Int64)"),
    ("output_tokens", "Nullable(Int64)", "Nullable(Int64)"),
    ("quality_score", "Nullable(Float64)", "Nullable(Float64)"),
]
LIST_COLUMNS = frozenset(
    name for name, modern, _ in _EVENTS if modern.startswith("Array")
)
"""Columns whose outbox value is a JSON array of texts."""


@dataclasses.dataclass(frozen=True)
class Table:
    """One ClickHouse table: the columns the sink inserts, and its DDL."""

    name: str
    columns: tuple[str, ...]
    _typed: tuple[tuple[str, str, str], ...]

    def ddl(self, database: str, modern: bool) -> str:
        """``CREATE TABLE IF NOT EXISTS`` for a modern or an old server."""
        lines = [
            f"{name} {modern_type if modern else old_type}"
            for name, modern_type, old_type in self._typed
        ]
        if modern:
            lines.append(
                "timestamp DateTime64(9, 'UTC') "
                "DEFAULT fromUnixTimestamp64Nano(timestamp_ns)"
            )
            # From arrival, not the row's own time: a history shipped
            # late, a clock behind or a damaged time would else be
            # deleted at the next merge, under the reconciliation.
            tail = f"TTL received + INTERVAL {TTL_DAYS} DAY "
        else:
            lines.append(
                "timestamp DateTime DEFAULT "
                "toDateTime(intDiv(timestamp_ns, 1000000000))"
            )
            tail = ""
        lines.append("received DateTime DEFAULT now()")
        body = ",\n    ".join(lines)
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}` (\n"
            f"    {body}\n) ENGINE = ReplacingMergeTree()\n"
            "PARTITION BY toYYYYMM(timestamp)\n"
            "ORDER BY (host, epoch, lane, seq)\n" + tail
        )

    def insert(self, database: str) -> str:
        """The ``INSERT`` statement for the sink's columns."""
        return (
            f"INSERT INTO `{database}`.`{self.name}` "
            f"({', '.join(self.columns)}) VALUES"
        )


def _table(name: str, typed: list[tuple[str, str, str]]) -> Table:
    every = tuple(_IDENTITY + typed)
    return Table(name, tuple(c[0] for c in every), every)


TABLES = {
    "events": _table("events", _EVENTS),
    "agent_runs": _table("agent_runs", _AGENT_RUNS),
}
"""The ClickHouse table of each outbox source the sink takes."""


def is_modern(version: tuple[int, ...]) -> bool:
    """Whether a server of ``version`` takes the modern DDL."""
    return tuple(version[:2]) >= MODERN_SINCE
