"""
The forwarder ships every outbox row once per success, advances its mark
only after the destination took a batch, retries with backoff, and never
lets a slow or failing destination hold the daemon's stop.
"""

from __future__ import annotations

import pickle
import sqlite3
import time

import pytest

from daemon.forward import (
    SOURCES,
    Backoff,
    DestinationError,
    Forwarder,
    read_marks,
    read_rows,
)
from daemon.forwarding import Forwarding
from tests.daemon.sinks.conftest import Recording, event_batch

FAST = Backoff(base_s=0.01, cap_s=0.05, permanent_s=0.2)


def wait_for(predicate, timeout_s=20.0):
    """Poll until ``predicate()``; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def forwarding(store):
    """A started Forwarding for one Recording destination; stopped after."""
    destination = Recording()
    group = Forwarding(store.path, [destination], backoff=FAST, idle_s=0.02)
    group.destination = destination
    yield group
    group.stop(5.0)


class TestReadRows:
    def test_events_as_monitoring_events_with_identity(self, store):
        """Texts resolved as the view has them, plus the identity."""
        rows = read_rows(store.db, "events", 0, 1000)
        view = store.db.execute(
            "SELECT * FROM monitoring_events ORDER BY id"
        ).fetchall()
        assert len(rows) == len(view) == 250
        assert rows.columns["id"] == [r[0] for r in view]
        assert rows.last_id == view[-1][0]
        assert set(rows.columns["query_category"]) == {"coding"}
        assert set(rows.columns["actual_agents"]) == {'["coder"]'}
        assert set(rows.columns["execution_time_ms"]) == {None}  # NaN
        assert set(rows.columns["token_count"]) == {None}  # -1: unknown
        for name in ("epoch", "lane", "seq", "request_id", "timestamp_ns"):
            assert len(rows.columns[name]) == 250
        assert rows.columns["seq"] == list(range(250))

    def test_batches_are_bounded_and_resume_after_the_mark(self, store):
        """limit rows at most, the next read starts above the last id."""
        first = read_rows(store.db, "events", 0, 100)
        second = read_rows(store.db, "events", first.last_id, 100)
        assert len(first) == len(second) == 100
        assert second.columns["id"][0] > first.last_id
        assert read_rows(store.db, "events", 10**12, 100) is None

    def test_a_missing_table_yields_nothing(self, store):
        """A source whose migration has not run yet (agent_runs before
        0008 here, or any such) reads as empty."""
        store.db.execute("DROP VIEW adjustment_log")
        assert read_rows(store.db, "adjustments", 0, 10) is None

    def test_bad_arguments_raise(self, store):
        """An unknown source and a limit below 1 are caller errors."""
        with pytest.raises(KeyError):
            read_rows(store.db, "nope", 0, 10)
        with pytest.raises(ValueError, match="limit"):
            read_rows(store.db, "events", 0, 0)

    def test_every_source_reads(self, store):
        """Each source's query runs on a migrated database (the feedback
        tables are empty here; agent_runs comes with migration 0008)."""
        for source in sorted(set(SOURCES) - {"events"}):
            assert read_rows(store.db, source, 0, 10) is None


class TestForwarder:
    def test_ships_every_row_once_and_stores_the_mark(self, store, forwarding):
        """All 250 rows arrive once, in id order; the mark is saved."""
        forwarding.start()
        dest = forwarding.destination
        wait_for(lambda: len(dest.ids()) == 250)
        forwarding.save(store)
        ids = dest.ids()
        assert ids == sorted(set(ids))
        assert read_marks(store.db, "recording") == {"events": ids[-1]}

    def test_new_rows_follow(self, store, forwarding):
        """Rows committed while it runs are shipped too."""
        forwarding.start()
        dest = forwarding.destination
        wait_for(lambda: len(dest.ids()) == 250)
        store.write(1, [], [event_batch(40, lane=1)])
        wait_for(lambda: len(dest.ids()) == 290)

    def test_restart_resumes_at_the_stored_mark(self, store, forwarding):
        """A new forwarder ships only what the stored mark has not."""
        forwarding.start()
        wait_for(lambda: len(forwarding.destination.ids()) == 250)
        assert forwarding.stop(5.0)
        forwarding.save(store)
        store.write(1, [], [event_batch(10, lane=2)])
        again = Recording()
        second = Forwarding(store.path, [again], backoff=FAST, idle_s=0.02)
        second.start()
        try:
            wait_for(lambda: len(again.ids()) == 10)
            time.sleep(0.1)
            assert len(again.ids()) == 10
        finally:
            assert second.stop(5.0)
        assert forwarding.destination.closed and again.closed

    def test_failed_batches_are_shipped_again(self, store, forwarding):
        """A refused batch does not move the mark: it comes again, and
        the error shows until shipping works."""
        dest = forwarding.destination
        dest.fail_next = 5
        forwarding.start()
        wait_for(lambda: len(dest.ids()) == 250)
        assert dest.attempts == 5 + 1  # one batch: refused 5 times
        [figures] = forwarding.figures()
        assert figures["failures"] == 0
        assert figures["last_error"] == "refused for the test"
        assert figures["shipped_rows"] == 250

    def test_lag_shows_while_failing(self, store, forwarding):
        """While the destination refuses, status says how far behind."""
        dest = forwarding.destination
        dest.fail_next = 10**9
        forwarding.start()
        wait_for(lambda: forwarding.figures()[0]["failures"] >= 3)
        wait_for(lambda: forwarding.figures()[0]["lag_rows"] == 250)
        figures = forwarding.figures()[0]
        assert figures["lag_s"] >= 0 and figures["shipped_rows"] == 0
        assert figures["last_error_at"] is not None
        assert dest.ids() == []
        forwarding.save(store)
        assert read_marks(store.db, "recording") == {"events": 0}

    def test_lag_shows_while_a_ship_hangs(self, store, forwarding):
        """Rows that came while caught up, stuck in a ship that does not
        return (a server that took the connection and never answers):
        status shows them behind at once, not 0 until the timeout."""
        dest = forwarding.destination
        forwarding.start()
        wait_for(lambda: len(dest.ids()) == 250)
        dest.block.set()
        attempts = dest.attempts
        store.write(1, [], [event_batch(40, lane=1)])
        wait_for(lambda: dest.attempts > attempts)  # inside ship, held
        figures = forwarding.figures()[0]
        assert figures["lag_rows"] == 40
        assert figures["lag_s"] >= 0 and figures["shipped_rows"] == 250
        dest.block.clear()
        wait_for(lambda: forwarding.figures()[0]["lag_rows"] == 0)

    def test_a_bug_in_a_destination_is_retried_not_fatal(
        self, store, forwarding
    ):
        """Any exception from ship counts as a failure and is retried."""
        dest = forwarding.destination
        dest.error = ZeroDivisionError("a bug")
        dest.fail_next = 2
        forwarding.start()
        wait_for(lambda: len(dest.ids()) == 250)
        assert "ZeroDivisionError" in forwarding.figures()[0]["last_error"]

    def test_stop_is_bounded_when_ship_hangs(self, store, forwarding):
        """A destination stuck in a call cannot hold the daemon's stop."""
        dest = forwarding.destination
        dest.block.set()
        forwarding.start()
        wait_for(lambda: dest.attempts >= 1)
        started = time.monotonic()
        assert forwarding.stop(0.3) is False
        assert time.monotonic() - started < 3.0
        dest.block.clear()

    def test_stop_flushes_what_is_pending(self, store):
        """Rows committed just before the stop are shipped by it."""
        dest = Recording()
        group = Forwarding(store.path, [dest], backoff=FAST, idle_s=5.0)
        group.start()
        wait_for(lambda: len(dest.ids()) == 250)
        store.write(1, [], [event_batch(30, lane=3)])
        assert group.stop(5.0)
        assert len(dest.ids()) == 280

    def test_a_database_that_cannot_be_read_is_retried(self, tmp_path):
        """No database yet: the forwarder waits, then ships."""
        from daemon.store import Store
        from tests.daemon.sinks.conftest import label_batch

        path = str(tmp_path / "later.db")
        dest = Recording()
        group = Forwarding(path, [dest], backoff=FAST, idle_s=0.02)
        group.start()
        try:
            wait_for(lambda: group.figures()[0]["failures"] >= 2)
            store = Store(path)
            store.write(1, [label_batch("coding")], [event_batch(5)])
            wait_for(lambda: len(dest.ids()) == 5)
            store.close()
        finally:
            group.stop(5.0)

    def test_a_replaced_database_ships_from_its_own_marks(self, tmp_path):
        """The daemon moved a damaged file aside and started a new one at
        the path: the forwarder reads the new file's marks (none), so its
        low ids ship too, and old marks never land in the new file."""
        import os

        from daemon.store import Store
        from tests.daemon.sinks.conftest import label_batch

        path = str(tmp_path / "swap.db")
        old = Store(path)
        old.write(1, [label_batch("coding")], [event_batch(100)])
        dest = Recording()
        group = Forwarding(path, [dest], backoff=FAST, idle_s=0.02)
        group.start()
        try:
            wait_for(lambda: len(dest.ids()) == 100)
            group.save(old)
            old.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.rename(path + suffix, path + ".aside" + suffix)
            new = Store(path)
            # The old file's mark (100) never lands here; the new file's
            # own (0) may, once the forwarder has noticed the swap.
            group.save(new)
            assert read_marks(new.db, "recording").get("events", 0) == 0
            new.write(2, [label_batch("coding")], [event_batch(30)])
            wait_for(lambda: len(dest.ids()) == 130)
            assert dest.ids()[100:] == list(range(1, 31))
            group.save(new)
            assert read_marks(new.db, "recording") == {"events": 30}
            new.close()
        finally:
            group.stop(5.0)

    def test_marks_are_not_saved_before_they_are_read(self, store):
        """An unstarted forwarder never overwrites stored marks with 0."""
        store.db.execute(
            "INSERT INTO sink_progress VALUES ('recording', 'events', 99, 1)"
        )
        group = Forwarding(store.path, [Recording()], backoff=FAST)
        group.save(store)
        assert read_marks(store.db, "recording") == {"events": 99}

    def test_configuration_is_checked(self, store):
        """Unknown sources, repeated names, bad sizes are refused."""
        with pytest.raises(ValueError, match="sources"):
            Forwarder(store.path, Recording(sources=("nope",)))
        with pytest.raises(ValueError, match="batch_rows"):
            Forwarder(store.path, Recording(), batch_rows=0)
        with pytest.raises(ValueError, match="repeat"):
            Forwarding(store.path, [Recording(), Recording()])
        assert Forwarding(store.path, [Recording()]).names_for("events") == [
            "recording"
        ]


class TestBackoff:
    def test_grows_exponentially_up_to_the_cap(self):
        """Each failure doubles the delay, never beyond the cap."""
        backoff = Backoff(base_s=1.0, cap_s=8.0)
        error = DestinationError("down")
        top = [
            backoff.delay_s(n, error, rand=lambda: 1.0)
            for n in (1, 2, 3, 4, 9)
        ]
        assert top == [1.0, 2.0, 4.0, 8.0, 8.0]

    def test_jitter_keeps_half(self):
        """Equal jitter: between half and all of the exponential delay."""
        backoff = Backoff(base_s=1.0, cap_s=8.0)
        error = DestinationError("down")
        assert backoff.delay_s(3, error, rand=lambda: 0.0) == 2.0
        assert backoff.delay_s(3, error, rand=lambda: 0.5) == 3.0

    def test_retry_after_and_permanent(self):
        """A destination's wish is honoured, up to the slow cap;
        permanent errors wait the slow cap."""
        backoff = Backoff(base_s=1.0, cap_s=8.0, permanent_s=60.0)
        later = DestinationError("busy", retry_after=20.0)
        assert backoff.delay_s(1, later) == 20.0
        huge = DestinationError("busy", retry_after=1e9)
        assert backoff.delay_s(1, huge) == 60.0
        broken = DestinationError("bad password", permanent=True)
        assert backoff.delay_s(1, broken) == 60.0
        with pytest.raises(ValueError):
            backoff.delay_s(0, broken)


class TestDestinationError:
    def test_pickles_with_its_data(self):
        """It crosses processes with retry_after and permanent."""
        error = pickle.loads(
            pickle.dumps(
                DestinationError("x", retry_after=3.0, permanent=True)
            )
        )
        assert (str(error), error.retry_after, error.permanent) == (
            "x",
            3.0,
            True,
        )
        assert isinstance(error, ConnectionError)


def test_reads_do_not_block_the_writer(store):
    """The forwarder's connection reads a snapshot: a write commits while
    a read is open (WAL), so the drain never waits for a destination."""
    reader = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        reader.execute("BEGIN")
        count = "SELECT count(*) FROM events"
        assert reader.execute(count).fetchone()[0] == 250
        store.write(1, [], [event_batch(5, lane=4)])  # commits meanwhile
        assert reader.execute(count).fetchone()[0] == 250
    finally:
        reader.close()
    assert store.db.execute(count).fetchone()[0] == 255
