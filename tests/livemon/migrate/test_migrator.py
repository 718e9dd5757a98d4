"""
``livemon migrate`` and ``livemon backup``: exact reconciliation, reasons
for every rejected row, idempotence, archives, and bad input refused with
the unified database unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sqlite3
import stat

import pytest
from click.testing import CliRunner

from livemon.cli import cli
from livemon.exceptions import LegacyError
from livemon.migrate.migrator import migrate
from tests.livemon.migrate import legacy_fixtures as fx


@pytest.fixture
def legacy(tmp_path):
    """The three legacy files, and how many good and bad rows each has."""
    files = {
        "routing": (tmp_path / "routing_decisions.db", fx.routing_db),
        "quality": (tmp_path / "quality_metrics.db", fx.quality_db),
        "performance": (tmp_path / "agent_performance.db", fx.performance_db),
    }
    return {
        kind: (str(path), *build(path))
        for kind, (path, build) in files.items()
    }


@pytest.fixture
def unified(tmp_path):
    """Where the unified database goes."""
    return str(tmp_path / "state" / "unified_monitoring.db")


@pytest.fixture
def runner():
    """A click runner for the livemon command."""
    return CliRunner()


def paths(legacy):
    """The legacy files' paths."""
    return [path for path, _, _ in legacy.values()]


class TestMigrate:
    def test_everything_reconciles_exactly(self, legacy, unified):
        """Rows read = migrated + rejected; aggregates equal; view works."""
        reports = migrate(unified, paths(legacy))
        assert len(reports) == 3
        for report in reports:
            _, good, bad = legacy[report.kind]
            assert (report.read, report.migrated, report.added) == (
                good + bad,
                good,
                good,
            )
            assert sum(report.rejected.values()) == bad
            assert report.reconciled, report.checks
            assert len(report.checks) >= 3
        with contextlib.closing(sqlite3.connect(unified)) as db:
            kinds = dict(
                db.execute(
                    "SELECT event_type, count(*) FROM monitoring_events "
                    "GROUP BY event_type"
                )
            )
            assert kinds == {"routing": 200, "quality": 150, "execution": 300}
            agents = db.execute(
                "SELECT actual_agents FROM monitoring_events "
                "WHERE event_type = 'execution' AND actual_agents != '[]'"
            ).fetchall()
            assert len(agents) == 300

    def test_rejections_name_their_reasons(self, legacy, unified):
        """Bad timestamp, out of range, missing field: each counted."""
        reports = {r.kind: r for r in migrate(unified, paths(legacy))}
        assert set(reports["routing"].rejected) == {
            "bad timestamp",
            "confidence out of range",
            "missing suggested_agents",
            "suggested_agents is not a JSON array",
        }
        assert "missing actual_agents" in reports["performance"].rejected
        assert "execution_time_ms out of range" in (
            reports["performance"].rejected
        )

    def test_second_run_adds_nothing(self, legacy, unified):
        """Idempotent: identities come from the source rows."""
        migrate(unified, paths(legacy))
        again = migrate(unified, paths(legacy))
        assert [r.added for r in again] == [0, 0, 0]
        assert all(r.reconciled for r in again)
        with contextlib.closing(sqlite3.connect(unified)) as db:
            assert db.execute("SELECT count(*) FROM events").fetchone() == (
                650,
            )

    def test_dry_run_writes_nothing(self, legacy, unified):
        """--dry-run reports the counts and creates no database."""
        reports = migrate(unified, paths(legacy), dry_run=True)
        assert sum(r.migrated for r in reports) == 650
        assert not os.path.exists(unified)

    def test_dry_run_claims_no_count_of_new_rows(self, legacy, unified):
        """A dry run cannot know which rows are new (nothing is written):
        it says what it would migrate, not "0 new"."""
        result = CliRunner().invoke(
            cli,
            ["migrate", *paths(legacy), "--db", unified, "--dry-run"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0
        assert " new" not in result.output
        assert f"would migrate into {unified}: 650 rows" in result.output

    def test_archives_are_copies_checksummed_and_read_only(
        self, legacy, unified, tmp_path
    ):
        """Originals stay; copies are read-only with a matching sha256."""
        reports = migrate(
            unified, paths(legacy), archive_dir=str(tmp_path / "archive")
        )
        for report in reports:
            copy = pathlib.Path(report.archived_to)
            assert copy.parent == tmp_path / "archive"
            assert stat.S_IMODE(copy.stat().st_mode) == 0o444
            digest, name = (
                (copy.parent / (copy.name + ".sha256")).read_text().split()
            )
            assert name == copy.name
            assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
            assert os.path.exists(report.path)

    def test_mapping_file_for_other_names(self, tmp_path, unified):
        """A TOML mapping reads a table and columns of other names."""
        sql = (
            fx.PERFORMANCE_SQL.replace("agent_performance", "perf_log")
            .replace("agent_name", "agent")
            .replace("execution_time_ms", "duration_ms")
        )
        path = tmp_path / "perf.db"
        good, bad = fx.performance_db(path, table="perf_log", sql=sql)
        mapping = tmp_path / "mapping.toml"
        mapping.write_text(
            '[performance]\ntable = "perf_log"\n[performance.columns]\n'
            'actual_agents = "agent"\nexecution_time_ms = "duration_ms"\n'
        )
        result = CliRunner().invoke(
            cli,
            ["migrate", str(path), "--db", unified, "--mapping", str(mapping)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert f"migrated {good} ({good} new), rejected {bad}" in result.output


class TestBadInput:
    def unchanged(self, unified, action):
        """Run ``action``; the unified database must not change."""
        migrate(unified, [])  # creates an empty, migrated database
        before = pathlib.Path(unified).read_bytes()
        with pytest.raises(LegacyError) as info:
            action()
        assert pathlib.Path(unified).read_bytes() == before
        return str(info.value)

    def test_missing_file(self, legacy, unified, tmp_path):
        """A missing file is named, nothing written."""
        message = self.unchanged(
            unified,
            lambda: migrate(
                unified, [*paths(legacy), str(tmp_path / "nope.db")]
            ),
        )
        assert "nope.db: no such file" in message

    def test_not_sqlite(self, legacy, unified, tmp_path):
        """A text file is not mistaken for a database."""
        text = tmp_path / "notes.db"
        text.write_text("just some notes\n" * 100)
        message = self.unchanged(
            unified, lambda: migrate(unified, [*paths(legacy), str(text)])
        )
        assert "not a readable SQLite database" in message

    def test_corrupt(self, legacy, unified, tmp_path):
        """A damaged page is found before anything is migrated."""
        path = tmp_path / "broken.db"
        fx.performance_db(path, good=3000)
        data = bytearray(path.read_bytes())
        data[4096 * 3 : 4096 * 3 + 100] = b"\x07" * 100
        path.write_bytes(bytes(data))
        message = self.unchanged(
            unified, lambda: migrate(unified, [*paths(legacy), str(path)])
        )
        assert "broken.db" in message

    def test_unknown_layout(self, unified, tmp_path):
        """Tables of another shape: say which, suggest a mapping."""
        path = tmp_path / "other.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE misc (a, b)")
            db.commit()
        message = self.unchanged(
            unified, lambda: migrate(unified, [str(path)])
        )
        assert "unknown layout" in message and "--mapping" in message

    def test_locked(self, legacy, unified):
        """A legacy file under an exclusive lock: wait, then say so."""
        path = legacy["quality"][0]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            message = self.unchanged(unified, lambda: migrate(unified, [path]))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert "locked" in message

    def test_cli_exit_codes(self, legacy, unified, runner, tmp_path):
        """Errors exit 1 with a message; misuse exits 2."""
        missing = runner.invoke(
            cli, ["migrate", str(tmp_path / "x.db"), "--db", unified]
        )
        assert missing.exit_code == 1 and "no such file" in missing.output
        assert "Traceback" not in missing.output
        assert runner.invoke(cli, ["migrate"]).exit_code == 2
        ok = runner.invoke(
            cli,
            ["migrate", *paths(legacy), "--db", unified],
            catch_exceptions=False,
        )
        assert ok.exit_code == 0 and "ok " in ok.output


class TestUnwritableDestination:
    def test_locked_database_is_one_clear_error(self, legacy, unified):
        """Another writer holds the unified database: a LegacyError that
        says what to do, and the source is not archived."""
        migrate(unified, paths(legacy)[:1])  # create it
        holder = sqlite3.connect(unified, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(LegacyError, match="writ"):
                migrate(unified, paths(legacy)[1:2])
        finally:
            holder.close()
