"""
Retention keeps what a destination has not shipped; status and its
one-line summary tell each destination's lag and trouble.
"""

from __future__ import annotations

import numpy as np

import ringbuf
from daemon.retention import NS_PER_DAY, Retention
from daemon.status import status_line, status_text
from livemon.record import RECORD_DTYPE
from livemon.views.top import sink_lines

NOW = 1_790_000_000 * 10**9


def old_events(count: int) -> ringbuf.Batch:
    """``count`` events from 200 days before NOW."""
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = NOW - 200 * NS_PER_DAY + np.arange(count)
    return ringbuf.Batch(6, 0, records)


def mark(store, sink: str, last_id: int) -> None:
    """Store ``sink``'s events mark."""
    store.db.execute(
        "INSERT OR REPLACE INTO sink_progress VALUES (?, 'events', ?, 1)",
        (sink, last_id),
    )


def ids(store) -> list[int]:
    """Event ids left in the database."""
    return [
        r[0] for r in store.db.execute("SELECT id FROM events ORDER BY id")
    ]


class TestRetentionKeepsUnshipped:
    def test_only_rows_every_destination_shipped_move(self, store, tmp_path):
        """Old rows above the lowest mark stay, however old."""
        store.write(1, [], [old_events(100)])
        first_old = ids(store)[250]
        mark(store, "fast", first_old + 80)
        mark(store, "slow", first_old + 29)
        moved = Retention(
            store, 90, str(tmp_path / "a"), sinks=["fast", "slow"]
        ).run(NOW)
        assert moved.total == 30
        assert ids(store)[250] == first_old + 30

    def test_a_destination_without_a_mark_keeps_everything(
        self, store, tmp_path
    ):
        """A sink configured but never shipped counts as mark 0."""
        store.write(1, [], [old_events(100)])
        retention = Retention(store, 90, str(tmp_path / "a"), sinks=["new"])
        assert retention.run(NOW).total == 0

    def test_the_newest_row_stays(self, store, tmp_path):
        """Even fully shipped, the newest row stays, so SQLite never hands
        out an id at or below a mark again."""
        store.db.execute("DELETE FROM events")
        store.write(1, [], [old_events(10)])
        newest = max(ids(store))
        mark(store, "all", newest)
        Retention(store, 90, str(tmp_path / "a"), sinks=["all"]).run(NOW)
        assert ids(store) == [newest]

    def test_without_destinations_nothing_changes(self, store, tmp_path):
        """No sinks configured: every old row moves but the newest, which
        stays with or without sinks (its id would be handed out again)."""
        store.write(1, [], [old_events(100)])
        assert Retention(store, 90, str(tmp_path / "a")).run(NOW).total == 99


FIGURES = {
    "drained": 10,
    "drain_per_s": 1.0,
    "lag_records": 0,
    "dropped": 0,
    "lanes_in_use": 1,
    "lanes": 4,
    "last_error": None,
    "incident": None,
    "file_errors": [],
    "quarantined_lanes": [],
    "refused_claims": 0,
    "spill": {},
}


def sink(**more):
    """A destination's figures as the forwarder publishes them."""
    figures = {
        "sink": "clickhouse",
        "lag_rows": 1234,
        "lag_s": 61.0,
        "shipped_rows": 50,
        "failures": 0,
        "last_error": None,
        "retry_in_s": None,
    }
    figures.update(more)
    return figures


def report(*sinks):
    """A running daemon's status report with these destinations."""
    return {
        **FIGURES,
        "running": True,
        "state": "running",
        "pid": 1,
        "uptime_s": 5,
        "rss_bytes": 2**20,
        "cpu_percent": 0,
        "figures_age_s": 0.5,
        "ring": "r",
        "db": "d",
        "sinks": list(sinks),
    }


class TestStatus:
    def test_the_summary_names_a_failing_destination(self):
        """STATUS= tells a failing sink and its lag, not a healthy one."""
        assert "sink" not in status_line({**FIGURES, "sinks": [sink()]})
        line = status_line(
            {**FIGURES, "sinks": [sink(failures=3, last_error="down")]}
        )
        assert "sink clickhouse FAILING (1234 rows behind): down" in line

    def test_the_text_shows_lag_and_the_last_error(self):
        """status prints each destination's lag, and why it fails."""
        text = status_text(
            report(
                sink(failures=2, last_error="refused", retry_in_s=4.0),
                sink(sink="otlp", lag_rows=0, last_error="old trouble"),
            )
        )
        assert "sink      clickhouse: lag 1234 rows, 61 s" in text
        assert "FAILING x2: refused (retry in 4 s)" in text
        assert "otlp: lag 0 rows" in text and "last error: old trouble" in text

    def test_the_text_shows_what_a_sink_refused(self):
        """Spans the collector would not take (and were skipped) show on
        the sink's line; none refused, nothing is said."""
        text = status_text(
            report(
                sink(refused={"spans_rejected": 0, "spans_too_large": 3}),
                sink(sink="otlp", refused={"spans_too_large": 0}),
            )
        )
        first, second = [
            line for line in text.splitlines() if "sink  " in line
        ]
        assert first.endswith("; refused and skipped: 3 spans_too_large")
        assert "refused" not in second


class TestTop:
    def test_a_line_per_destination(self):
        """top shows each sink's lag, and FAILING with the error."""
        lines = sink_lines(
            {"sinks": [sink(), sink(sink="otlp", failures=1, last_error="x")]}
        )
        assert lines[0].startswith("sink      clickhouse  lag 1,234 rows 61 s")
        assert "FAILING" not in lines[0]
        assert lines[1].endswith("FAILING: x")
        assert sink_lines(None) == sink_lines({}) == []
