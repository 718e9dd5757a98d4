"""
One writer for everyone: ``open_writer`` creates every database alike
(the daemon's, ``livemon migrate``'s, retention's archives), and
``atomic`` commits, rolls back and nests.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat

import pytest

from livemon.db import schema
from livemon.db.transaction import atomic
from livemon.db.writer import PAGE_BYTES, open_writer
from livemon.migrate import migrate
from tests.livemon.migrate import legacy_fixtures as fx


def settings(path: str) -> tuple[int, int, str, int]:
    """(page size, auto_vacuum, journal mode, file mode) of ``path``."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        vacuum = db.execute("PRAGMA auto_vacuum").fetchone()[0]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    return page, vacuum, journal, stat.S_IMODE(os.stat(path).st_mode)


INCREMENTAL = 2


class TestOpenWriter:
    def test_new_database_gets_the_daemons_settings(self, tmp_path):
        """Page size, incremental vacuum, WAL, mode, every migration."""
        path = str(tmp_path / "new" / "unified.db")
        db = open_writer(path, mode=0o640)
        try:
            assert schema.pending(db) == []
        finally:
            db.close()
        assert settings(path) == (PAGE_BYTES, INCREMENTAL, "wal", 0o640)
        # The group may read the file, so it may enter the directory.
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o750

    def test_reopening_writes_nothing(self, tmp_path):
        """Opening a database that exists commits no page: a daemon that
        reopens it on every retry must not grow a WAL a reader pins."""
        path = str(tmp_path / "unified.db")
        open_writer(path).close()
        with contextlib.closing(sqlite3.connect(path)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM events").fetchone()
            for _ in range(3):
                open_writer(path).close()
            assert os.path.getsize(path + "-wal") == 0
        assert settings(path)[:2] == (PAGE_BYTES, INCREMENTAL)

    def test_migrate_creates_the_same_database(self, tmp_path):
        """``livemon migrate`` into a new file: the daemon's settings."""
        legacy = tmp_path / "routing_decisions.db"
        fx.routing_db(legacy)
        target = str(tmp_path / "state" / "unified.db")
        migrate(target, [str(legacy)])
        assert settings(target) == (PAGE_BYTES, INCREMENTAL, "wal", 0o600)

    def test_damaged_file_is_refused(self, tmp_path):
        """A file that is not SQLite raises ``DatabaseError``, closed."""
        path = tmp_path / "junk.db"
        path.write_bytes(b"not a database" * 1000)
        with pytest.raises(sqlite3.DatabaseError):
            open_writer(str(path))


class TestAtomic:
    @pytest.fixture
    def db(self, tmp_path):
        """A writer connection with one scratch table."""
        db = open_writer(str(tmp_path / "t.db"), check=False)
        db.execute("CREATE TABLE t (x INTEGER)")
        yield db
        db.close()

    def rows(self, db):
        """The values in the scratch table."""
        return [x for (x,) in db.execute("SELECT x FROM t ORDER BY x")]

    def test_commits_and_rolls_back(self, db):
        """A block that ends commits; one that raises leaves nothing."""
        with atomic(db):
            db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(KeyError), atomic(db):
            db.execute("INSERT INTO t VALUES (2)")
            raise KeyError("boom")
        assert self.rows(db) == [1]
        assert not db.in_transaction

    def test_nested_blocks_are_savepoints(self, db):
        """An inner failure undoes only the inner block."""
        with atomic(db):
            db.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(KeyError), atomic(db):
                db.execute("INSERT INTO t VALUES (2)")
                raise KeyError("inner")
            with atomic(db):
                db.execute("INSERT INTO t VALUES (3)")
        assert self.rows(db) == [1, 3]

    def test_error_after_sqlite_rolled_back_is_kept(self, db):
        """When SQLite already ended the transaction, the caller's error
        comes through, not 'no transaction is active'."""
        with pytest.raises(KeyError), atomic(db):
            db.execute("INSERT INTO t VALUES (1)")
            db.execute("ROLLBACK")
            raise KeyError("original")
        assert self.rows(db) == []

    def test_failed_commit_leaves_no_transaction_open(self, db, tmp_path):
        """A COMMIT refused (a reader holds the database) is rolled back:
        the next block is a transaction of its own, not a savepoint."""
        reader = sqlite3.connect(str(tmp_path / "t.db"), isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 0")
            db.execute("PRAGMA journal_mode = DELETE")
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM t").fetchone()  # SHARED
            with pytest.raises(sqlite3.OperationalError), atomic(db):
                db.execute("INSERT INTO t VALUES (1)")
            assert not db.in_transaction
        finally:
            reader.close()
        with atomic(db):
            db.execute("INSERT INTO t VALUES (2)")
        assert self.rows(db) == [2]
