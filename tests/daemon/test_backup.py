"""
``livemon backup`` of a database the daemon is writing at that moment.
"""

from __future__ import annotations

import contextlib
import sqlite3

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
