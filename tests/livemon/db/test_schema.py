"""
Migrations: each runs inside its own transaction, statement by statement.
"""

from __future__ import annotations

import contextlib
import sqlite3

from livemon.db import schema


class TestStatements:
    def test_semicolon_in_a_literal_does_not_split(self):
        """A ';' inside a string literal belongs to its statement."""
        with contextlib.closing(sqlite3.connect(":memory:")) as db:
            schema._run(
                db,
                "CREATE TABLE a (x TEXT DEFAULT 'a;b'); CREATE TABLE b (y);",
            )
            db.execute("INSERT INTO a DEFAULT VALUES")
            assert db.execute("SELECT x FROM a").fetchone() == ("a;b",)
            names = db.execute("SELECT name FROM sqlite_master ORDER BY name")
            assert [n for (n,) in names] == ["a", "b"]

    def test_every_migration_applies_once(self):
        """A new database gets every migration, a second call none."""
        with contextlib.closing(
            sqlite3.connect(":memory:", isolation_level=None)
        ) as db:
            assert schema.apply_migrations(db) == [
                name for name, _ in schema.MIGRATIONS
            ]
            assert schema.apply_migrations(db) == []
            assert schema.pending(db) == []
