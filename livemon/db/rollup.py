"""
Hourly rollups of the events table, so reports over months answer in
well under a second: counts and sums per hour, agent and category, latency
histograms and error/override-reason counts.

Kept in step with ``events`` by whoever inserts (``rows.insert_events``),
in the same transaction, from the rows just added.
"""

from __future__ import annotations

import collections
import math
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

NS_PER_HOUR = 3600 * 10**9
BUCKETS_PER_DOUBLING = 8
"""Latency histogram resolution: buckets 9% wide; a percentile read
from them, interpolated, is within 2% of the exact one on real spreads."""

MAX_BUCKET = 400  # 2**50 ms: anything longer is "very long"

ERROR, OVERRIDE = 0, 1
"""``rollup_reasons.kind``: what the label is the text of."""

EVERY_REQUEST = 0
"""The ``agent`` of rollup rows that count every request once; other rows
count the requests that used that agent (label id)."""

_EVERY = {"agent": str(EVERY_REQUEST), "join": ""}
_EACH_AGENT = {
    "agent": "m.member",
    "join": "JOIN list_members AS m ON m.list = e.actual_agents",
}


def _every_and_each(select: str) -> str:
    """``select`` for every request, then for each agent a request used."""
    return " UNION ALL ".join(
        select.format(**keys, where="{where}")
        for keys in (_EVERY, _EACH_AGENT)
    )


# Each SELECT aggregates the events matching {where} into rollup rows;
# the same text maintains the tables and serves a report's partial hours.
ROLLUP_SELECT = _every_and_each(f"""
    SELECT e.timestamp_ns / {NS_PER_HOUR} AS hour,
        {{agent}} AS agent,
        e.intent_category AS category,
        sum(e.event_type IN (0, 1)) AS requests,
        sum(e.success >= 0) AS known,
        sum(e.success = 1) AS successes,
        sum(e.accepted >= 0) AS decided,
        sum(e.accepted = 0) AS overrides,
        count(e.execution_time_ms) AS timed,
        total(e.execution_time_ms) AS time_ms_sum,
        count(e.quality_score) AS scored,
        total(e.quality_score) AS quality_sum,
        total(max(e.token_count, 0)) AS tokens
    FROM events AS e {{join}} WHERE {{where}}
    GROUP BY 1, 2, 3""")

LATENCY_SELECT = _every_and_each(f"""
    SELECT e.timestamp_ns / {NS_PER_HOUR} AS hour,
        {{agent}} AS agent,
        CAST(min({BUCKETS_PER_DOUBLING}
            * log2(1 + max(e.execution_time_ms, 0)), {MAX_BUCKET})
            AS INTEGER) AS bucket,
        count(*) AS requests
    FROM events AS e {{join}}
    WHERE e.execution_time_ms IS NOT NULL AND ({{where}})
    GROUP BY 1, 2, 3""")

REASONS_SELECT = " UNION ALL ".join(
    _every_and_each(f"""
    SELECT e.timestamp_ns / {NS_PER_HOUR} AS hour, {kind} AS kind,
        e.{column} AS label, {{agent}} AS agent, count(*) AS requests
    FROM events AS e {{join}} WHERE e.{column} != 0 AND ({{where}})
    GROUP BY 1, 3, 4""")
    for kind, column in ((ERROR, "error"), (OVERRIDE, "override_reason"))
)

SUM_COLUMNS = [  # of ``rollup``, after its key
    "requests",
    "known",
    "successes",
    "decided",
    "overrides",
    "timed",
    "time_ms_sum",
    "scored",
    "quality_sum",
    "tokens",
]

_ON_CONFLICT = (
    "ON CONFLICT (hour, agent, category) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS),
    "ON CONFLICT (hour, agent, bucket) DO UPDATE SET "
    "requests = requests + excluded.requests",
    "ON CONFLICT (hour, kind, label, agent) DO UPDATE SET "
    "requests = requests + excluded.requests",
)
ROLLUP_TABLES = ("rollup", "rollup_latency", "rollup_reasons")
_SELECTS = (ROLLUP_SELECT, LATENCY_SELECT, REASONS_SELECT)
_UPSERT_SELECTED = [
    f"INSERT INTO {table} SELECT * FROM ({select.format(where='e.id > ?')}) "
    f"WHERE true {conflict}"
    for table, select, conflict in zip(
        ROLLUP_TABLES, _SELECTS, _ON_CONFLICT, strict=True
    )
]
_UPSERT_VALUES = [
    f"INSERT INTO {table} VALUES ({', '.join('?' * width)}) {conflict}"
    for table, width, conflict in zip(
        ROLLUP_TABLES,
        (3 + len(SUM_COLUMNS), 4, 5),
        _ON_CONFLICT,
        strict=True,
    )
]

INSERT_MEMBERS = "INSERT OR IGNORE INTO list_members VALUES (?, ?)"


def add_inserted(
    db: sqlite3.Connection,
    records: npt.NDArray[np.void],
    added: int,
    last_id: int,
) -> None:
    """Fold in what one insert of ``records`` added: ``added`` rows, all
    with ids above ``last_id``.  In numpy when every record was new; when
    a replay left some out, in SQL from the rows SQLite kept.
    """
    if added == len(records):
        add_records(db, records)
    elif added:
        add_events_after(db, last_id)


def add_events_after(db: sqlite3.Connection, after_id: int) -> None:
    """Fold the events with ``id > after_id`` into the rollups, in SQL.

    New rows always get ids above every existing one, and rows ignored as
    duplicates get none, so each event is counted exactly once.  The
    caller owns the transaction.
    """
    ensure_math(db)
    for statement in _UPSERT_SELECTED:
        db.execute(statement, (after_id,) * statement.count("?"))


def add_records(db: sqlite3.Connection, records: npt.NDArray[np.void]) -> None:
    """Fold records just inserted (every one of them) into the rollups.

    The same sums as ``add_events_after``, in numpy: measured here, SQL
    aggregation took ~80 ms per 20,000 rows, 40% of the insert itself.

    Args:
        records: RECORD_DTYPE[n], all inserted by the caller's transaction.
    """
    if not len(records):
        return
    row, agent = _every_and_each_agent(records["actual_agents"])
    stamps = records["timestamp_ns"]
    hour = np.where(
        stamps >= 0, stamps // NS_PER_HOUR, -(-stamps // NS_PER_HOUR)
    )[row]
    category = records["intent_category"][row]
    first, group = group_rows(hour, agent, category)
    time_ms = records["execution_time_ms"]
    quality = records["quality_score"]
    success, accepted = records["success"], records["accepted"]
    # The sums are computed per record, then spread to the rows at once.
    per_record = np.stack(
        [
            (records["event_type"] == 0) | (records["event_type"] == 1),
            success >= 0,
            success == 1,
            accepted >= 0,
            accepted == 0,
            ~np.isnan(time_ms),
            np.nan_to_num(time_ms, nan=0.0),
            ~np.isnan(quality),
            np.nan_to_num(quality, nan=0.0),
            np.maximum(records["token_count"], 0),
        ]
    ).astype(np.float64)[:, row]
    columns = [
        hour[first],
        agent[first],
        category[first],
        *(
            np.bincount(group, weights=s, minlength=len(first))
            for s in per_record
        ),
    ]
    db.executemany(_UPSERT_VALUES[0], _rows(columns))

    time_ms = time_ms[row]
    timed = ~np.isnan(time_ms)
    shifted = 1 + np.maximum(time_ms[timed], 0.0)
    scaled = np.minimum(BUCKETS_PER_DOUBLING * np.log2(shifted), MAX_BUCKET)
    bucket = scaled.astype(np.int64)
    first, group = group_rows(hour[timed], agent[timed], bucket)
    counts = np.bincount(group, minlength=len(first))
    db.executemany(
        _UPSERT_VALUES[1],
        _rows(
            [hour[timed][first], agent[timed][first], bucket[first], counts]
        ),
    )

    for kind, field in ((ERROR, "error"), (OVERRIDE, "override_reason")):
        labels = records[field][row]
        given = labels != 0
        first, group = group_rows(hour[given], labels[given], agent[given])
        counts = np.bincount(group, minlength=len(first))
        db.executemany(
            _UPSERT_VALUES[2],
            _rows(
                [
                    hour[given][first],
                    np.full(len(first), kind),
                    labels[given][first],
                    agent[given][first],
                    counts,
                ]
            ),
        )


def _every_and_each_agent(
    lists: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Rows to aggregate: each record once as ``EVERY_REQUEST``, then once
    per distinct agent in its list (``lists``: int64[n, k], 0-padded).

    Returns (record index, agent) of each row.
    """
    fresh = lists != 0
    # An agent named earlier in its list is not fresh.  Column against
    # column, and only up to the last column in use (lists are short):
    # sorting each row to find repeats cost 2 ms per 20,000.
    used = np.flatnonzero(fresh.any(axis=0))
    for later in range(1, int(used[-1]) + 1 if len(used) else 0):
        for earlier in range(later):
            fresh[:, later] &= lists[:, later] != lists[:, earlier]
    record, slot = np.nonzero(fresh)
    every = np.arange(len(lists))
    return (
        np.concatenate([every, record]),
        np.concatenate([np.zeros(len(lists), np.int64), lists[record, slot]]),
    )


def group_rows(
    *keys: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Group rows by equal keys: one row of each group (its keys are the
    group's), each row's group; groups in the keys' order.

    The keys are combined into one int64 code, because numpy sorts rows
    of several columns ~20x slower: a key with a small range (hours,
    buckets) is its own code, others (label ids) are numbered by rank.
    Codes are few (hours x agents x categories), so the groups are found
    by marking the codes present, without sorting the rows at all.
    """
    combined = np.zeros(len(keys[0]), np.int64)
    if not len(combined):
        return np.empty(0, np.intp), np.empty(0, np.intp)
    codes_in_all = 1
    for key in keys:
        low = int(key.min())
        span = int(key.max()) - low + 1
        if span <= _SMALL_RANGE:
            codes = key - low
        else:
            span, codes = _ranks(key)
        combined = combined * span + codes
        codes_in_all *= span
    return _one_of_each(combined, codes_in_all)


def _ranks(
    key: npt.NDArray[np.int64],
) -> tuple[int, npt.NDArray[np.intp]]:
    """How many distinct values ``key`` holds, and each value's rank among
    them (what ``np.unique(return_inverse=True)`` gives).

    The distinct values are found in a sample and the values it missed,
    so only those are sorted: label ids repeat (a dozen agents over
    40,000 rows), and sorting them all took 1-2 ms a column.
    """
    distinct = np.unique(key[::_SAMPLE_STRIDE])
    ranks = np.searchsorted(distinct, key)
    missed = distinct[np.minimum(ranks, len(distinct) - 1)] != key
    if missed.any():
        distinct = np.union1d(distinct, key[missed])
        ranks = np.searchsorted(distinct, key)
    return len(distinct), ranks


def _one_of_each(
    combined: npt.NDArray[np.int64], codes: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """One row of each group (any row will do) and each row's group, for
    group codes ``combined`` in ``range(codes)``; groups by code order."""
    if codes > max(_SMALL_RANGE, 4 * len(combined)):  # sparse: sort
        distinct, group = np.unique(combined, return_inverse=True)
        group = group.reshape(-1)
        count = len(distinct)
    else:
        present = np.zeros(codes, np.intp)
        present[combined] = 1
        number = np.cumsum(present) - 1
        group = number[combined]
        count = int(number[-1]) + 1
    row = np.empty(count, np.intp)
    row[group] = np.arange(len(group))
    return row, group


_SMALL_RANGE = 2**16  # three such keys still fit one int64
_SAMPLE_STRIDE = 64


def _rows(columns: list[npt.NDArray[Any]]) -> Iterator[tuple[Any, ...]]:
    return zip(*(c.tolist() for c in columns), strict=True)


def rebuild_hours(db: sqlite3.Connection, start_ns: int, end_ns: int) -> None:
    """Recompute the rollups of every hour touching [start_ns, end_ns]
    from the events stored now (after rows were deleted or archived).

    The caller owns the transaction.
    """
    ensure_math(db)
    first, last = start_ns // NS_PER_HOUR, end_ns // NS_PER_HOUR
    hours = {"lo": first * NS_PER_HOUR, "hi": (last + 1) * NS_PER_HOUR}
    where = "timestamp_ns >= :lo AND timestamp_ns < :hi"
    for table, select in zip(ROLLUP_TABLES, _SELECTS, strict=True):
        db.execute(
            f"DELETE FROM {table} WHERE hour BETWEEN ? AND ?", (first, last)
        )
        db.execute(f"INSERT INTO {table} {select.format(where=where)}", hours)


def ensure_math(db: sqlite3.Connection) -> None:
    """Provide ``log2`` where SQLite was built without math functions."""
    try:
        db.execute("SELECT log2(2)")
    except sqlite3.OperationalError:
        db.create_function("log2", 1, _log2, deterministic=True)


def _log2(x: float | None) -> float | None:
    return None if x is None or x <= 0 else math.log2(x)


def bucket_ms(bucket: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The latency (ms) where a histogram bucket starts."""
    return np.exp2(bucket / BUCKETS_PER_DOUBLING) - 1


def percentiles(
    buckets: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    quantiles: tuple[float, ...] = (0.5, 0.95),
) -> list[float]:
    """Latency percentiles (ms) read from one histogram (NaN if empty),
    interpolated within the bucket holding each rank.

    Args:
        buckets: int64[n], bucket numbers (any order).
        counts: int64[n], requests in each bucket.
    """
    total = int(counts.sum())
    if total == 0:
        return [math.nan] * len(quantiles)
    order = np.argsort(buckets, kind="stable")
    buckets, counts = buckets[order], counts[order]
    cumulative = np.cumsum(counts)
    ranks = np.asarray(quantiles) * total
    found = np.searchsorted(cumulative, ranks).clip(0, len(buckets) - 1)
    before = cumulative[found] - counts[found]
    share = (ranks - before) / counts[found]
    low, high = bucket_ms(buckets[found]), bucket_ms(buckets[found] + 1)
    return (low + share * (high - low)).tolist()  # type: ignore[no-any-return]


def percentiles_per_key(
    rows: Iterable[tuple[Any, int, int]],
) -> dict[Any, list[float]]:
    """p50 and p95 latency (ms) per key, from ``(key, bucket, count)``
    rows of a latency rollup (a key's rows may come in any order)."""
    histograms: dict[Any, collections.Counter[int]] = collections.defaultdict(
        collections.Counter
    )
    for key, bucket, count in rows:
        histograms[key][bucket] += count
    return {
        key: percentiles(
            np.fromiter(histogram.keys(), np.int64, len(histogram)),
            np.fromiter(histogram.values(), np.int64, len(histogram)),
        )
        for key, histogram in histograms.items()
    }
