"""
The chaos soak's books: every request a producer reported, found in the
database exactly once, or in its list of counted drops; and the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import pathlib
import sqlite3
from typing import Any

import numpy as np

from bench.chaos_producer import HEADER_WORDS, MAGIC, MAX_DROPS, REASONS

_ID_MASK = (1 << 32) - 1


@dataclasses.dataclass(frozen=True)
class Result:
    """What a soak sent and what became of it.

    ``sent``: requests the producers reported ended, plus those a killed
    producer had stored but not yet reported.  ``lost``: reported, not in
    the database, not counted dropped.  ``drop_stored``: counted dropped
    yet stored (a miscount).  ``foreign``: rows of no producer here.
    ``texts_unknown``: rows whose error text never reached the labels
    table (a killed producer's held labels; else a lost label).
    """

    processes: int
    killed: int
    sent: int
    stored: int
    dropped: dict[str, int]
    lost: int
    duplicated: int
    drop_stored: int
    foreign: int
    texts_unknown: int = 0
    soak_s: float = 0.0
    catch_up_s: float = 0.0
    peak_spill: int = 0
    cleared_s: float | None = None  # after an outage: backlog replayed in
    events: dict[str, int] = dataclasses.field(default_factory=dict)
    daemon_drops: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Progress:
    """One producer's published progress (see ``bench.chaos_producer``)."""

    base: int
    ended: int
    finished: bool
    drop_count: int
    drop_ids: np.ndarray  # request numbers (1..ended) counted lost
    drop_reasons: np.ndarray  # index into REASONS


def read_progress(path: pathlib.Path) -> Progress:
    """Read a progress file, as a killed producer left it."""
    with (
        open(path, "rb") as file,
        contextlib.closing(
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        ) as mm,
    ):
        head = np.frombuffer(mm, "<u8", HEADER_WORDS).copy()
        if head[0] != MAGIC:
            return Progress(0, 0, False, 0, np.empty(0), np.empty(0))
        count = int(head[3])
        entries = np.frombuffer(
            mm, "<u8", min(count, MAX_DROPS), HEADER_WORDS * 8
        ).copy()
    return Progress(
        base=int(head[1]),
        ended=int(head[2]),
        finished=bool(head[4]),
        drop_count=count,
        drop_ids=(entries & np.uint64(_ID_MASK)).astype(np.int64),
        drop_reasons=(entries >> np.uint64(56)).astype(np.int64),
    )


_UNKNOWN_TEXTS = """
SELECT count(*) FROM events
WHERE error != 0 AND error NOT IN (SELECT label_id FROM labels)
"""


def stored_ids(db_path: str) -> tuple[np.ndarray, int]:
    """Every events.request_id, in one array; rows of unknown error text."""
    with contextlib.closing(
        sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    ) as db:
        rows = db.execute("SELECT request_id FROM events").fetchall()
        unknown = int(db.execute(_UNKNOWN_TEXTS).fetchone()[0])
    return np.array([r[0] for r in rows], np.int64), unknown


def reconcile(db_path: str, progress_paths: list[pathlib.Path]) -> Result:
    """Check every reported request against the database, one by one."""
    ids, texts_unknown = stored_ids(db_path)
    unique = np.unique(ids)
    bases, numbers = unique >> 32, unique & _ID_MASK
    dropped = dict.fromkeys(REASONS, 0)
    sent = stored = lost = drop_stored = killed = 0
    known = np.zeros(len(unique), bool)
    for path in progress_paths:
        got = read_progress(path)
        killed += not got.finished
        mine = bases == got.base if got.ended else np.zeros_like(known)
        known |= mine
        have = numbers[mine]
        reported = have[have <= got.ended]
        tail = len(have) - len(reported)  # stored, not yet reported
        sent += got.ended + tail
        stored += len(have)
        for reason, count in zip(
            *np.unique(got.drop_reasons, return_counts=True), strict=True
        ):
            dropped[REASONS[int(reason)]] += int(count)
        if got.drop_count > MAX_DROPS:  # only the count is exact
            dropped[REASONS[0]] += got.drop_count - MAX_DROPS
            lost += max(0, got.ended - len(reported) - got.drop_count)
            continue
        both = np.intersect1d(got.drop_ids, reported)
        drop_stored += len(both)
        lost += got.ended - len(reported) - (got.drop_count - len(both))
    return Result(
        processes=len(progress_paths),
        killed=killed,
        sent=sent,
        stored=stored,
        dropped=dropped,
        lost=lost,
        duplicated=len(ids) - len(unique),
        drop_stored=drop_stored,
        foreign=int((~known).sum()),
        texts_unknown=texts_unknown,
    )


def table(result: Result) -> str:
    """The soak's figures, one per line."""
    dropped = sum(result.dropped.values())
    reasons = ", ".join(f"{k} {v:,}" for k, v in result.dropped.items() if v)
    daemon = result.daemon_drops
    rows = [
        ("producer processes", f"{result.processes} ({result.killed} killed)"),
        ("sent", f"{result.sent:,}"),
        ("stored", f"{result.stored:,}"),
        (
            "dropped (counted)",
            f"{dropped:,}" + (f" ({reasons})" if reasons else ""),
        ),
        ("lost (not counted)", f"{result.lost:,}"),
        ("duplicated", f"{result.duplicated:,}"),
        ("counted dropped, yet stored", f"{result.drop_stored:,}"),
        ("rows of no producer", f"{result.foreign:,}"),
        ("error texts unknown", f"{result.texts_unknown:,}"),
        ("peak spill backlog", f"{result.peak_spill:,} events and labels"),
        ("soak / catch-up", f"{result.soak_s} s / {result.catch_up_s} s"),
        (
            "backlog replayed in",
            "-"
            if result.cleared_s is None
            else f"{result.cleared_s:.1f} s after the daemon returned "
            f"({result.peak_spill / max(result.cleared_s, 0.1):,.0f}/s)",
        ),
        (
            "chaos",
            ", ".join(f"{k} {v}" for k, v in result.events.items() if v)
            or "none",
        ),
        (
            "daemon saw (lanes)",
            f"spilled {daemon.get('spilled', 0):,}, lost "
            f"{daemon.get('lost', 0):,}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
