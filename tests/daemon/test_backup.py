"""
``livemon backup`` of a database the daemon is writing at that moment.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time

from click.testing import CliRunner

from livemon.cli import cli
from tests.daemon.conftest import coordinators


class TestBackup:
    def test_backup_while_written_passes_integrity_check(
        self, start_daemon, tmp_path
    ):
        """An online copy of a database the daemon is writing is sound."""
        runner = CliRunner()
        daemon = start_daemon()
        load = coordinators(daemon.env, 2, 4000)
        daemon.wait_until(lambda: daemon.count() > 1000)
        copy = tmp_path / "copy.db"
        result = runner.invoke(
            cli,
            ["backup", str(copy), "--db", daemon.db],
            catch_exceptions=False,
        )
        for process in load:
            process.communicate(timeout=300)
        assert result.exit_code == 0, result.output
        with contextlib.closing(sqlite3.connect(copy)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT count(*) FROM events").fetchone()[0] > 0
        assert daemon.stop() == 0
        again = runner.invoke(cli, ["backup", str(copy), "--db", daemon.db])
        assert again.exit_code == 2  # will not overwrite

    def test_locked_database_gives_up_in_one_line(self, tmp_path):
        """A database another process holds locked: exit 1 after --timeout,
        one line, no copy left behind (it used to retry forever)."""
        from livemon.db.writer import open_writer

        path = tmp_path / "u.db"
        open_writer(str(path)).close()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("PRAGMA locking_mode = EXCLUSIVE")
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "livemon",
                    "backup",
                    str(tmp_path / "c.db"),
                    "--db",
                    str(path),
                    "--timeout",
                    "2",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            took = time.monotonic() - started
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert result.returncode == 1, result.stderr
        assert "locked" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert took < 30
        assert not (tmp_path / "c.db").exists()
