"""
Reports agree with the events counted directly, use the indexes (their
query plans are printed and checked), and fail with clear messages.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from livemon.cli import cli
from livemon.db import reading, rollup, schema
from livemon.record import RECORD_DTYPE, label_id
from livemon.views import tail
from livemon.views.report import build_report
from tests.livemon.helpers import AGENTS, synthetic_records, write_database

HOUR_NS = rollup.NS_PER_HOUR
COUNT = 20_000
END_NS = (1_790_000_000 * 10**9 // HOUR_NS) * HOUR_NS + 1234567
START_NS = END_NS - 30 * HOUR_NS


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A WAL database with 20,000 events over 30 hours, and the records."""
    path = str(tmp_path_factory.mktemp("report") / "unified.db")
    records, labels = synthetic_records(
        COUNT, 11, START_NS, 30 * HOUR_NS // COUNT
    )
    write_database(path, records, labels)
    return path, records, labels


@pytest.fixture
def reader(stored):
    """A read-only connection to the stored database."""
    db = reading.open_database(stored[0])
    yield db
    db.close()


def uses(records, agent_id):
    """Which records list ``agent_id`` among their actual agents."""
    return (records["actual_agents"] == agent_id).any(axis=1)


def runner_invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


class TestBuildReport:
    # Partial hours at both ends: edges from events, the rest rollups.
    SPAN = reading.TimeRange(START_NS + 37 * 60 * 10**9, END_NS - 13 * 10**11)

    def in_span(self, records):
        stamps = records["timestamp_ns"]
        return records[
            (stamps >= self.SPAN.start_ns) & (stamps < self.SPAN.end_ns)
        ]

    def test_agents_and_categories_match_a_direct_count(self, reader, stored):
        """Per-agent and per-category figures equal numpy over the events
        in the range (percentiles within the buckets' 2%)."""
        _, records, _ = stored
        chosen = self.in_span(records)
        report = build_report(reader, reading.Labels(reader), self.SPAN)
        agents = {r[0]: r for r in report.table("agents").rows}
        assert set(agents) == set(AGENTS)
        for name in AGENTS:
            mine = chosen[uses(chosen, label_id(name))]
            _, requests, success, mean_ms, p50, p95, quality = agents[name][:7]
            assert agents[name][-1] == "requests"  # no agent runs stored
            assert requests == np.isin(mine["event_type"], (0, 1)).sum()
            known = mine["success"] >= 0
            assert success == pytest.approx(
                (mine["success"] == 1).sum() / known.sum()
            )
            times = mine["execution_time_ms"]
            assert mean_ms == pytest.approx(np.nanmean(times))
            assert p95 == pytest.approx(np.nanpercentile(times, 95), rel=0.03)
            assert p50 == pytest.approx(np.nanpercentile(times, 50), rel=0.03)
            assert quality == pytest.approx(np.nanmean(mine["quality_score"]))
        for row in report.table("categories").rows:
            mine = chosen[chosen["intent_category"] == label_id(row[0])]
            decided = (mine["accepted"] >= 0).sum()
            assert row[2] == pytest.approx(
                (mine["accepted"] == 0).sum() / decided
            )

    def test_trend_and_reasons_add_up(self, reader, stored):
        """Trend buckets cover every request; reason counts are exact."""
        _, records, labels = stored
        chosen = self.in_span(records)
        report = build_report(reader, reading.Labels(reader), self.SPAN)
        trend = report.table("trend")
        assert len(trend.rows) == 30  # 28 whole hours, two partial
        assert (
            sum(trend.column("requests"))
            == np.isin(chosen["event_type"], (0, 1)).sum()
        )
        errors = dict(
            (reason, count) for count, reason in report.table("errors").rows
        )
        ids, counts = np.unique(
            chosen["error"][chosen["error"] != 0], return_counts=True
        )
        assert errors == {
            labels[int(i)]: int(c) for i, c in zip(ids, counts, strict=True)
        }

    def test_one_agent(self, reader, stored):
        """--agent keeps only requests that used it."""
        labels = reading.Labels(reader)
        full = build_report(reader, labels, self.SPAN)
        only = build_report(reader, labels, self.SPAN, agent="coder")
        coder = full.table("agents").rows[
            full.table("agents").column("agent").index("coder")
        ]
        assert only.table("agents").rows == [coder]
        total = sum(only.table("trend").column("requests"))
        assert total == coder[1]

    def test_query_plans_use_the_indexes(self, reader):
        """No report or tail query scans the events table: whole hours are
        read by the rollups' keys, partial ones by the timestamp index,
        tail by the primary key."""
        statements = []
        reader.set_trace_callback(statements.append)
        build_report(reader, reading.Labels(reader), self.SPAN)
        which = tail.EventFilter(category=label_id("code"), success=False)
        tail.latest(reader, which, 10)
        tail.newer(reader, which, 100, 200, 10)
        reader.set_trace_callback(None)
        plans = {}
        for sql in statements:
            if sql.lstrip().startswith("SELECT") and "FROM labels" not in sql:
                plan = reader.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
                plans[sql] = [row[3] for row in plan]
        assert len(plans) >= 9
        for sql, steps in plans.items():  # shown with pytest -s
            print(f"\n{' '.join(sql.split())[:100]}...")
            print("\n".join(f"    {step}" for step in steps))
        for steps in plans.values():
            assert not any(s.startswith("SCAN events") for s in steps), steps
            assert not any(s.startswith("SCAN e") for s in steps), steps
        edges = [s for steps in plans.values() for s in steps]
        assert any("USING INDEX idx_timestamp" in s for s in edges)
        assert any(
            "rollup USING PRIMARY KEY (hour>? AND hour<?)" in s for s in edges
        )
        assert any(
            "INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in s for s in edges
        )


class TestReportCommand:
    def test_table_with_sparklines(self, stored):
        """The terminal report has every section and a trend sparkline."""
        result = runner_invoke(
            "report",
            "--db",
            stored[0],
            "--since",
            "2026-09-20T09:00",
            "--until",
            "2026-09-21T12:00",
        )
        assert result.exit_code == 0, result.output
        for title in (
            "Per agent",
            "Per category",
            "Trend per hour (UTC)",
            "Top errors",
            "Top override reasons",
            "Alerts",
        ):
            assert title in result.output
        latency = next(
            line
            for line in result.output.splitlines()
            if "latency p95" in line
        )
        assert set(latency.split()[2]) <= set("▁▂▃▄▅▆▇█ ")

    def test_json_csv_and_plot(self, stored, tmp_path):
        """JSON parses, CSV of one table parses, the SVG draws two trends."""
        span = [
            "--db",
            stored[0],
            "--since",
            "2026-09-20",
            "--until",
            "2026-09-22",
            "--per",
            "day",
        ]
        body = json.loads(
            runner_invoke("report", *span, "--format", "json").output
        )
        assert {a["agent"] for a in body["agents"]} == set(AGENTS)
        assert [t["start"] for t in body["trend"]] == [
            "2026-09-20",
            "2026-09-21",
        ]
        assert all(math.isfinite(a["p95_ms"]) for a in body["agents"])
        out = runner_invoke(
            "report", *span, "--format", "csv", "--table", "agents"
        )
        rows = list(csv.DictReader(io.StringIO(out.output)))
        assert sorted(r["agent"] for r in rows) == sorted(AGENTS)
        plot = tmp_path / "trend.svg"
        result = runner_invoke("report", *span, "--plot", str(plot))
        assert result.exit_code == 0
        svg = ET.parse(plot).getroot()
        lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
        assert len(lines) == 3  # latency p95 and mean, quality
        assert all(len(p.get("points").split()) == 2 for p in lines)


class TestClearErrors:
    @pytest.mark.parametrize(
        "args, code, message",
        [
            (["--since", "yesterday"], 2, "cannot read the time 'yesterday'"),
            (["--since", "1h", "--until", "2h"], 2, "must be before --until"),
            (["--agent", "nobody"], 2, "unknown agent 'nobody'"),
        ],
        ids=["unreadable time", "reversed range", "unknown agent"],
    )
    def test_bad_requests(self, stored, args, code, message):
        """Usage errors exit 2 with the reason and no traceback."""
        result = runner_invoke("report", "--db", stored[0], *args)
        assert result.exit_code == code
        assert message in result.output
        assert "Traceback" not in result.output

    def test_unknown_agent_lists_agents_not_domains(self, tmp_path):
        """The known agents named are agents: a request's intent domains
        (also stored as a list) are not offered as agents."""
        path = str(tmp_path / "unified.db")
        records = np.zeros(1, RECORD_DTYPE)
        records["timestamp_ns"] = END_NS
        records["request_id"] = 1
        records["actual_agents"][0, 0] = label_id("coder")
        records["intent_domains"][0, 0] = label_id("python")
        texts = {label_id(t): t for t in ("coder", "python")}
        write_database(path, records, texts)
        result = runner_invoke("tail", "--db", path, "--agent", "nobody")
        assert result.exit_code == 2
        assert "known agents: coder\n" in result.output

    def test_tail_unknown_category(self, stored):
        """An unknown category lists the known ones."""
        result = runner_invoke("tail", "--db", stored[0], "--category", "x")
        assert result.exit_code == 2
        assert "known categories: code, docs, planning, review, search" in (
            result.output
        )

    def test_missing_database(self, tmp_path):
        """No file: say how to get one; exit 1."""
        result = runner_invoke("report", "--db", str(tmp_path / "none.db"))
        assert result.exit_code == 1
        assert "no database at" in result.output
        assert "livemon-daemon start" in result.output

    def test_not_a_database(self, tmp_path):
        """Garbage in the file is named as such."""
        path = tmp_path / "junk.db"
        path.write_bytes(b"not sqlite at all" * 100)
        result = runner_invoke("tail", "--db", str(path))
        assert result.exit_code == 1
        assert "not a readable SQLite database" in result.output

    def test_older_schema(self, tmp_path, monkeypatch):
        """A database from before the rollups: start the daemon on it."""
        path = str(tmp_path / "old.db")
        monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
        with contextlib.closing(
            sqlite3.connect(path, isolation_level=None)
        ) as db:
            schema.apply_migrations(db)
        monkeypatch.undo()
        result = runner_invoke("report", "--db", path)
        assert result.exit_code == 1
        assert "lacks 0004_hourly_rollups" in result.output

    def test_locked_database(self, stored):
        """A process holding an exclusive lock: named, within a second."""
        holder = sqlite3.connect(stored[0], isolation_level=None)
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            result = runner_invoke("report", "--db", stored[0])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert result.exit_code == 1
        assert "is locked by another process" in result.output
