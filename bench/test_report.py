"""
The operator's commands on a database of 10 million events (30 days),
against the same figures computed by scanning the events, in one run.

The database is built once and kept in .benchmarks/ (git-ignored): the
build takes a few minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import sqlite3
import time

import pytest
from click.testing import CliRunner

from livemon.cli import cli
from livemon.db import rollup, schema
from livemon.db.rows import ListLabels, insert_events, insert_labels
from ringbuf import Batch
from tests.livemon.helpers import synthetic_records

pytestmark = pytest.mark.benchmark(group="report")

EVENTS = 10_000_000
CHUNK = 100_000
DAYS = 30
ROOT = pathlib.Path(__file__).resolve().parent.parent
# Built only by this file; another schema means another file.
_SCHEMA = hashlib.sha1(
    (
        schema.ROLLUP_TABLES_DDL + " ".join(n for n, _ in schema.MIGRATIONS)
    ).encode()
).hexdigest()[:10]
DB_PATH = ROOT / ".benchmarks" / f"report-10M-{_SCHEMA}.db"
SECONDARY_INDEXES = ("idx_events_identity", "idx_timestamp", "idx_query_hash")
SECONDARY_INDEXES += ("idx_event_type",)


def build(path: pathlib.Path) -> None:
    """Ten million events ending now, through the daemon's insert path
    (rollups included); indexes are built after the rows, which is
    faster than keeping them up to date, and gives the same database."""
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".building")
    partial.unlink(missing_ok=True)
    db = sqlite3.connect(partial, isolation_level=None)
    db.execute("PRAGMA page_size = 16384")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    schema.apply_migrations(db)
    saved = {
        name: sql
        for name, sql in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'events' AND sql IS NOT NULL"
        )
    }
    assert set(saved) == set(SECONDARY_INDEXES)
    for name in saved:
        db.execute(f"DROP INDEX {name}")
    lists = ListLabels(db)
    step_ns = DAYS * 86400 * 10**9 // EVENTS
    start_ns = time.time_ns() - DAYS * 86400 * 10**9
    for first in range(0, EVENTS, CHUNK):
        records, labels = synthetic_records(
            CHUNK, first, start_ns + first * step_ns, step_ns
        )
        db.execute("BEGIN")
        insert_labels(db, lists, list(labels.items()))
        insert_events(db, lists, 1, Batch(first % 16, first, records))
        db.execute("COMMIT")
    for sql in saved.values():
        db.execute(sql)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    partial.rename(path)


@pytest.fixture(scope="module")
def big_db() -> str:
    """The 10-million-event database (built on first use)."""
    if not DB_PATH.exists():
        build(DB_PATH)
    with contextlib.closing(sqlite3.connect(DB_PATH)) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == (
            EVENTS
        )
    return str(DB_PATH)


def livemon(*args: str) -> str:
    """Run a livemon command in-process; its output."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def scan_per_agent(path: str, since: str) -> list[tuple]:
    """The per-agent figures as a dashboard query over events would get
    them: one GROUP BY on the timestamp range (the baseline)."""
    start_ns = (
        time.time_ns() - {"24h": 86400, "31d": 31 * 86400}[since] * 10**9
    )
    select = rollup.ROLLUP_SELECT.format(where="timestamp_ns >= :start")
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ) as db:
        return db.execute(
            f"SELECT agent, sum(requests), sum(successes) FROM ({select}) "
            "GROUP BY agent",
            {"start": start_ns},
        ).fetchall()


@pytest.mark.parametrize("since", ["24h", "31d"])
def test_scan_baseline(benchmark, record, big_db, since):
    """Aggregate the range's events directly (baseline, no rollups)."""
    rows = benchmark.pedantic(
        scan_per_agent,
        args=(big_db, since),
        rounds=1 if since == "31d" else 3,
    )
    assert sum(r[1] for r in rows) > 0
    record(benchmark)


@pytest.mark.parametrize("since", ["24h", "31d"])
def test_report(benchmark, record, big_db, since):
    """livemon report --format json over the last day / everything."""
    per = "hour" if since == "24h" else "day"
    output = benchmark.pedantic(
        livemon,
        args=(
            "report",
            "--db",
            big_db,
            "--since",
            since,
            "--per",
            per,
            "--format",
            "json",
        ),
        rounds=5,
    )
    body = json.loads(output)
    requests = sum(t["requests"] for t in body["trend"])
    assert requests > (EVENTS * 0.5 if since == "31d" else EVENTS / 60)
    record(benchmark, baseline=f"test_scan_baseline[{since}]")


def test_report_one_agent_as_table(benchmark, record, big_db):
    """livemon report --agent tester, as the terminal table."""
    output = benchmark.pedantic(
        livemon,
        args=("report", "--db", big_db, "--since", "7d", "--agent", "tester"),
        rounds=5,
    )
    assert "tester" in output and "latency p95" in output
    record(benchmark)


def test_tail_filtered(benchmark, record, big_db):
    """livemon tail -n 20 of one agent's failures in one category."""
    output = benchmark.pedantic(
        livemon,
        args=(
            "tail",
            "--db",
            big_db,
            "-n",
            "20",
            "--agent",
            "tester",
            "--category",
            "docs",
            "--failure",
        ),
        rounds=5,
    )
    lines = output.splitlines()
    assert len(lines) == 20 and all("FAIL" in line for line in lines)
    record(benchmark)


def test_database_size(big_db):
    """Not a timing: the size the figures above were measured on."""
    size = os.path.getsize(big_db)
    print(f"\n10M-event database: {size / 2**30:.2f} GiB")
    assert size > 10**9
