"""
A big migration sets the secondary indexes of ``events`` aside and builds
them at the end; one killed half-way leaves them to the next run, which
adds the rest exactly once.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sqlite3

import pytest

from livemon.migrate import bulk, migrator
from livemon.migrate.migrator import migrate
from tests.livemon.migrate import legacy_fixtures as fx

GOOD = 400


@pytest.fixture
def legacy(tmp_path):
    """An agent_performance.db of GOOD good rows and 3 bad ones."""
    path = tmp_path / "agent_performance.db"
    fx.performance_db(path, good=GOOD)
    return str(path)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 50 rows, and deferral from 100 rows on, so a few
    hundred rows make a big migration of several transactions."""
    monkeypatch.setattr(migrator, "CHUNK_ROWS", 50)
    monkeypatch.setattr(bulk, "DEFER_MIN_ROWS", 100)


def indexes(path):
    """Names of the secondary indexes on events in the file at ``path``."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return set(bulk._indexes(db))


def events(path):
    """Every stored event but its id, in identity order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT * FROM events ORDER BY epoch, lane, seq")
        return [row[1:] for row in rows]


def _migrate_then_die(db_path, legacy, after_rows):
    """Migrate in a child process and SIGKILL it once ``after_rows`` are
    written: a crash, with no finally block run."""
    migrator.CHUNK_ROWS = 50
    bulk.DEFER_MIN_ROWS = 100

    def progress(done, total):
        if done >= after_rows:
            os.kill(os.getpid(), signal.SIGKILL)

    migrate(db_path, [legacy], progress=progress)


class TestDeferredIndexes:
    def test_schema_indexes_are_the_non_unique_ones(self):
        """The indexes set aside are the schema's secondary ones on
        events, never the identity index that exactly-once relies on."""
        names = set(bulk.secondary_indexes())
        assert {"idx_timestamp", "idx_query_hash"} <= names
        assert "idx_events_identity" not in names

    def test_dropped_during_and_built_after(self, legacy, tmp_path):
        """While rows go in, the indexes are absent (seen from another
        connection); afterwards every one is back and the data equals a
        migration that kept them."""
        seen = []
        small, big = str(tmp_path / "kept.db"), str(tmp_path / "bulk.db")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bulk, "DEFER_MIN_ROWS", 10**9)
            (kept,) = migrate(small, [legacy], progress=lambda *_: None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bulk, "DEFER_MIN_ROWS", 100)
            (report,) = migrate(
                big, [legacy], progress=lambda *_: seen.append(indexes(big))
            )
        assert seen and all(not names for names in seen)
        assert indexes(big) == indexes(small) == set(bulk.secondary_indexes())
        assert report.reconciled and report.added == kept.added == GOOD
        assert events(big) == events(small)

    def test_not_deferred_into_a_bigger_database(
        self, legacy, tmp_path, small_chunks
    ):
        """Into a database holding more events than arrive, the indexes
        are kept: rebuilding would cost more than keeping them."""
        path = str(tmp_path / "unified.db")
        migrate(path, [legacy])
        db = migrator.open_unified(path)
        try:
            assert not bulk.should_defer(db, GOOD // 2)
            assert not bulk.should_defer(db, GOOD)  # the same run again
            assert bulk.should_defer(db, 10 * bulk.DEFER_MIN_ROWS)
            with pytest.raises(ValueError, match=">= 0"):
                bulk.should_defer(db, -1)
        finally:
            db.close()

    def test_killed_half_way_next_run_finishes(
        self, legacy, tmp_path, small_chunks
    ):
        """A migration SIGKILLed after some chunks leaves those rows and
        no secondary index; the next run builds them and adds the rest,
        each row once."""
        path = str(tmp_path / "unified.db")
        child = multiprocessing.get_context("spawn").Process(
            target=_migrate_then_die, args=(path, legacy, 150)
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL
        assert 0 < len(events(path)) < GOOD
        assert not indexes(path)
        before = len(events(path))
        (report,) = migrate(path, [legacy])
        assert indexes(path) == set(bulk.secondary_indexes())
        assert report.reconciled and report.migrated == GOOD
        assert len(events(path)) == GOOD
        assert report.added == GOOD - before


class TestIndexBuildCache:
    def test_small_cache_while_building_then_the_writers_again(
        self, legacy, tmp_path
    ):
        """The indexes are built under the small sort cache, and the
        connection has the writer's cache again afterwards."""
        path = str(tmp_path / "unified.db")
        migrate(path, [legacy])
        db = migrator.open_unified(path)
        try:
            (before,) = db.execute("PRAGMA cache_size").fetchone()
            bulk.drop_indexes(db)
            statements = []
            db.set_trace_callback(statements.append)
            built = bulk.restore_indexes(db)
            db.set_trace_callback(None)
            assert set(built) == set(bulk.secondary_indexes()) == indexes(path)
            small = f"PRAGMA cache_size = -{bulk.SORT_CACHE_KIB}"
            creates = [i for i, s in enumerate(statements) if "INDEX" in s]
            assert statements.index(small) < min(creates)
            assert db.execute("PRAGMA cache_size").fetchone() == (before,)
            assert before != -bulk.SORT_CACHE_KIB
        finally:
            db.close()

    def test_cache_restored_when_a_build_fails(self, legacy, tmp_path):
        """A build stopped by a lock another process holds leaves the
        index missing, the error raised, and the cache as it was."""
        path = str(tmp_path / "unified.db")
        migrate(path, [legacy])
        db = migrator.open_unified(path)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            bulk.drop_indexes(db)
            db.execute("PRAGMA busy_timeout = 0")
            (before,) = db.execute("PRAGMA cache_size").fetchone()
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                bulk.restore_indexes(db)
            other.execute("ROLLBACK")
            assert db.execute("PRAGMA cache_size").fetchone() == (before,)
            assert not indexes(path)
        finally:
            other.close()
            db.close()


class TestCollectorPaused:
    def test_paused_inside_and_restored_after_an_error(self):
        """The collector is off inside, and on again after the block,
        even one that raised."""
        assert gc.isenabled()
        with pytest.raises(KeyError), bulk.collector_paused():
            assert not gc.isenabled()
            raise KeyError("boom")
        assert gc.isenabled()

    def test_left_off_when_it_was_off(self):
        """A caller that had turned it off finds it off afterwards."""
        gc.disable()
        try:
            with bulk.collector_paused():
                pass
            assert not gc.isenabled()
        finally:
            gc.enable()
