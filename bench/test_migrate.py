"""
Migration rate of 1,000,000 legacy rows, against reading the same rows
from the legacy file (the floor any migration pays), in one run; and the
same migration keeping the secondary indexes up to date row by row (as
before they were set aside for a big migration).
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from livemon.migrate import bulk
from livemon.migrate.migrator import migrate
from tests.livemon.migrate import legacy_fixtures as fx

pytestmark = pytest.mark.benchmark(group="migrate")

ROWS = 1_000_000


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory):
    """An agent_performance.db of a million rows (built once), each few
    rows from another of 168 hours: every chunk touches every hour, the
    rollups' worst case."""
    path = tmp_path_factory.mktemp("legacy") / "agent_performance.db"
    fx.performance_db(path, good=ROWS)
    return str(path)


@pytest.fixture(scope="module")
def legacy_file_in_order(tmp_path_factory):
    """The same million rows a second apart, as a log appends them."""
    path = tmp_path_factory.mktemp("legacy") / "agent_performance.db"
    fx.performance_db(path, good=ROWS, in_time_order=True)
    return str(path)


def test_read_baseline(benchmark, record, legacy_file):
    """SELECT every row of the legacy table (baseline)."""

    def read():
        with contextlib.closing(sqlite3.connect(legacy_file)) as db:
            return sum(
                1 for _ in db.execute("SELECT * FROM agent_performance")
            )

    assert benchmark.pedantic(read, rounds=1) == ROWS + 3
    record(benchmark, items=ROWS)


def migrate_timed(benchmark, record, source, tmp_path, baseline, what):
    """Migrate ``source`` (1,000,000 rows) once under the benchmark, check
    it reconciled, keep its per-row figure against ``baseline``."""
    (report,) = benchmark.pedantic(
        migrate, args=(str(tmp_path / "unified.db"), [source]), rounds=1
    )
    assert report.reconciled and report.migrated == ROWS
    result = record(benchmark, items=ROWS, baseline=baseline)
    print(f"\n{what}: {1e6 / result['median_us']:,.0f} rows/s")


def test_migrate_million_rows(benchmark, record, legacy_file, tmp_path):
    """livemon migrate of 1,000,000 rows, with validation and reconciling."""
    migrate_timed(
        benchmark,
        record,
        legacy_file,
        tmp_path,
        "test_read_baseline",
        "migration",
    )


def test_migrate_million_rows_in_time_order(
    benchmark, record, legacy_file_in_order, tmp_path
):
    """The same migration of rows in time order (a chunk spans hours,
    not every hour): what a real legacy log costs."""
    migrate_timed(
        benchmark,
        record,
        legacy_file_in_order,
        tmp_path,
        "test_read_baseline",
        "migration in time order",
    )


def test_migrate_keeping_indexes(
    benchmark, record, legacy_file, tmp_path, monkeypatch
):
    """The same migration with the indexes kept up to date throughout."""
    monkeypatch.setattr(bulk, "DEFER_MIN_ROWS", 10**12)
    migrate_timed(
        benchmark,
        record,
        legacy_file,
        tmp_path,
        "test_migrate_million_rows",
        "migration keeping indexes",
    )
