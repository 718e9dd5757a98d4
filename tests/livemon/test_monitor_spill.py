"""
A Monitor whose lane is full spills instead of dropping: real processes,
real spill files, real SQLite; a SIGKILLed producer and a full tmpfs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import signal
import sqlite3
import time

import pytest

from daemon.drain import Drainer
from daemon.replay import SpillReplayer
from daemon.store import Store
from livemon import Monitor, ipc
from livemon.config import Config, load_config
from livemon.spill import SPILL_LANE_BASE
from livemon.spill import process as process_module

REQUESTS = 10_000
AGENTS = ["coder", "reviewer", "planner", "tester"]


def spilling_config(
    tmp_path: pathlib.Path, ring_name: str, **values: object
) -> Config:
    """A tiny ring (64 records a lane) whose full lanes spill."""
    return load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "state" / "livemon.db"),
            "lanes": 4,
            "capacity_records": 64,
            "label_capacity_records": 16,
            "spill_min_free_bytes": 0,
            **values,
        }
    )


def one_request(monitor: Monitor, i: int) -> None:
    """A request naming a few of many labels (so labels spill too)."""
    with monitor.request(f"query {i}", category=f"cat {i % 40}") as ctx:
        ctx.log_execution(
            actual_agents=[AGENTS[i % 4], f"agent {i % 97}"],
            execution_time_ms=float(i),
            success=i % 5 != 0,
            error=None if i % 5 else f"error {i % 53}",
        )


def record_requests(config: Config, count: int, start: int = 0) -> dict:
    """Record ``count`` requests; return the Monitor's counters."""
    with Monitor(config=config) as monitor:
        for i in range(start, start + count):
            one_request(monitor, i)
        return dataclasses.asdict(monitor.counters)


def drain_all(config: Config) -> tuple[int, int]:
    """Move ring and spill files into the database until both are empty.

    Returns:
        Events moved from the ring, and from the spill files.
    """
    events = ipc.attach_ring(ipc.events_ring(config))
    labels = ipc.attach_ring(ipc.labels_ring(config))
    store = Store(config.db)
    drainer = Drainer(config, events, labels, lambda: store)
    replayer = SpillReplayer(spill_dir(config), config.ring, store)
    from_ring = from_spill = 0
    try:
        while True:
            spilled = replayer.replay_once()
            drained = drainer.drain_once()
            from_spill += spilled
            from_ring += drained
            if not spilled and not drained:
                break
    finally:
        drainer.close()
        events.close()
        labels.close()
    return from_ring, from_spill


def spill_dir(config: Config) -> str:
    """Where the Monitor spills for ``config``."""
    return ipc.spill_root(config)


def query(config: Config, sql: str, *args: object) -> list[tuple]:
    """Rows of a query on the database."""
    with contextlib.closing(sqlite3.connect(config.db)) as db:
        return db.execute(sql, args).fetchall()


def segment_files(config: Config) -> list[pathlib.Path]:
    """Every spill segment file left."""
    return sorted(pathlib.Path(spill_dir(config)).rglob("*.lms"))


class TestSpillInsteadOfDrop:
    """With no daemon, a tiny ring loses nothing: the rest is spilled."""

    def test_ten_thousand_requests_reach_the_database(
        self, tmp_path, ring_name
    ):
        """All recorded or spilled, none dropped; exactly once in SQLite."""
        config = spilling_config(tmp_path, ring_name)
        counters = record_requests(config, REQUESTS)
        assert counters["dropped"] == 0
        assert counters["recorded"] + counters["spilled"] == REQUESTS
        assert counters["spilled"] >= REQUESTS - 64
        assert counters["labels_spilled"] > 0
        assert counters["labels_lost"] == 0
        from_ring, from_spill = drain_all(config)
        assert (from_ring, from_spill) == (
            counters["recorded"],
            counters["spilled"],
        )
        ((count, distinct),) = query(
            config,
            "SELECT count(*), count(DISTINCT epoch || '/' || lane || '/' "
            "|| seq) FROM events",
        )
        assert count == distinct == REQUESTS
        ((spill_rows,),) = query(
            config,
            "SELECT count(*) FROM events WHERE lane >= ?",
            SPILL_LANE_BASE,
        )
        assert spill_rows == counters["spilled"]
        unknown = query(
            config,
            "SELECT count(*) FROM monitoring_events WHERE "
            "actual_agents LIKE '%<unknown%' OR error LIKE '%<unknown%' "
            "OR query_category LIKE '%<unknown%'",
        )
        assert unknown == [(0,)]
        ((errors,),) = query(
            config,
            "SELECT count(*) FROM monitoring_events "
            "WHERE error LIKE 'error %'",
        )
        assert errors == REQUESTS // 5
        # The Monitor sealed its segments at close: all retired.
        assert segment_files(config) == []

    def test_the_state_directory_is_made_if_missing(self, tmp_path, ring_name):
        """Coordinators may spill before the daemon ever made its dir."""
        config = spilling_config(tmp_path, ring_name)
        assert not (tmp_path / "state").exists()
        counters = record_requests(config, 100)
        assert counters["spilled"] == 36
        assert (tmp_path / "state" / "spill").is_dir()
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700

    def test_off_drops_and_counts(self, tmp_path, ring_name):
        """``spill = false``: a full lane drops and counts, as before."""
        config = load_config(
            {
                "ring": ring_name,
                "db": str(tmp_path / "livemon.db"),
                "capacity_records": 4,
                "spill": False,
            }
        )
        with Monitor(config=config) as mon:
            results = [mon.request("q").end() for _ in range(6)]
        assert results == [True] * 4 + [False] * 2
        assert mon.counters.dropped == 2
        assert mon.counters.spilled == 0
        assert not (tmp_path / "spill").exists()

    def test_the_lane_seals_its_spill_once_the_ring_takes_records(
        self, tmp_path, ring_name, monkeypatch
    ):
        """Ring puts succeeding again seal the segment (retirable)."""
        monkeypatch.setattr(process_module, "SPILL_IDLE_S", 0.0)
        config = spilling_config(tmp_path, ring_name)
        with Monitor(config=config) as monitor:
            for i in range(100):
                one_request(monitor, i)
            assert monitor.counters.spilled == 36
            assert monitor._spills is not None
            assert monitor._spills.active
            drain_all(config)  # frees the lane, replays the spill
            one_request(monitor, 100)
            assert not monitor._spills.active  # sealed
            assert monitor.counters.recorded == 65
        drain_all(config)
        assert segment_files(config) == []
        assert query(config, "SELECT count(*) FROM events") == [(101,)]

    def test_a_new_owner_of_the_lane_continues_its_seqs(
        self, tmp_path, ring_name
    ):
        """Seqs of a later process on the lane are above the first's,
        even after every segment was replayed and retired."""
        config = spilling_config(tmp_path, ring_name)
        first = record_requests(config, 500)
        drain_all(config)
        assert segment_files(config) == []
        second = record_requests(config, 500, start=500)
        drain_all(config)
        spilled = first["spilled"] + second["spilled"]
        rows = query(
            config,
            "SELECT count(*) FROM events WHERE lane >= ?",
            SPILL_LANE_BASE,
        )
        assert rows == [(spilled,)]
        assert query(config, "SELECT count(*) FROM events") == [(1000,)]


def _spill_forever(config: Config, ready: object) -> None:
    """Record requests until killed; publish the counters as it goes."""
    counts = ready  # a multiprocessing.Array of two ints
    with Monitor(config=config) as monitor:
        i = 0
        while True:
            one_request(monitor, i)
            i += 1
            # After the record is in the ring or the page cache.
            counts[0] = monitor.counters.recorded  # type: ignore[index]
            counts[1] = monitor.counters.spilled  # type: ignore[index]


class TestKilledProducer:
    """A producer SIGKILLed while spilling loses nothing it counted."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_sigkill_while_spilling(self, tmp_path, ring_name, method):
        """Everything counted recorded or spilled reaches the database."""
        config = spilling_config(
            tmp_path, ring_name, spill_segment_bytes=64 * 1024
        )
        ctx = multiprocessing.get_context(method)
        counts = ctx.Array("q", 2, lock=False)
        child = ctx.Process(target=_spill_forever, args=(config, counts))
        child.start()
        try:
            deadline = time.monotonic() + 30
            while counts[1] < 3000 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.join(10)
        assert child.exitcode == -signal.SIGKILL
        recorded, spilled = counts[0], counts[1]
        assert spilled >= 3000
        from_ring, from_spill = drain_all(config)
        # The last put may have landed before its count was published.
        assert recorded <= from_ring <= recorded + 1
        assert spilled <= from_spill <= spilled + 1
        ((count, distinct),) = query(
            config,
            "SELECT count(*), count(DISTINCT epoch || '/' || lane || '/' "
            "|| seq) FROM events",
        )
        assert count == distinct == from_ring + from_spill
        # The abandoned segments were retired once replayed.
        assert segment_files(config) == []


class TestFullDisk:
    """A spill directory on a full disk: drops counted, never raised."""

    def test_tmpfs_fills_up(self, tmp_path, ring_name, tmpfs):
        """The producer neither blocks nor raises; losses are disk_full."""
        config = spilling_config(
            tmp_path,
            ring_name,
            spill_dir=str(tmpfs / "spill"),
            spill_segment_bytes=256 * 1024,
        )
        counters = record_requests(config, 20_000)
        assert (
            counters["recorded"] + counters["spilled"] + counters["dropped"]
            == 20_000
        )
        assert counters["spilled"] > 0
        assert counters["dropped"] > 0
        assert counters["dropped_disk_full"] == counters["dropped"]
        assert counters["failed"] == counters["unavailable"] == 0
        from_ring, from_spill = drain_all(config)
        assert (from_ring, from_spill) == (
            counters["recorded"],
            counters["spilled"],
        )


def _record_in_child(monitor: Monitor, count: int, out: object) -> None:
    """Record through a Monitor inherited over fork; publish counters."""
    for i in range(count):
        one_request(monitor, 100_000 + i)
    out[0] = monitor.counters.recorded  # type: ignore[index]
    out[1] = monitor.counters.spilled  # type: ignore[index]
    out[2] = monitor.counters.dropped  # type: ignore[index]
    monitor.close()


class TestForkedChild:
    """A forked child spills from its own lane, never its parent's."""

    def test_parent_and_child_both_spill(self, tmp_path, ring_name):
        """Both spill while their lanes are full; all reach the database."""
        config = spilling_config(tmp_path, ring_name)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Array("q", 3, lock=False)
        with Monitor(config=config) as monitor:
            for i in range(300):
                one_request(monitor, i)
            assert monitor.counters.spilled == 300 - 64
            # The child inherits the counters as they were at the fork.
            at_fork = dataclasses.asdict(monitor.counters)
            child = ctx.Process(
                target=_record_in_child, args=(monitor, 300, out)
            )
            child.start()
            child.join(30)
            assert child.exitcode == 0
            for i in range(300, 400):
                one_request(monitor, i)
            parent = dataclasses.asdict(monitor.counters)
        assert out[2] == parent["dropped"] == 0
        child_recorded = out[0] - at_fork["recorded"]
        child_spilled = out[1] - at_fork["spilled"]
        assert child_recorded + child_spilled == 300
        assert child_spilled > 0
        from_ring, from_spill = drain_all(config)
        assert from_ring + from_spill == 700
        assert from_spill == parent["spilled"] + child_spilled
        lanes = query(
            config,
            "SELECT DISTINCT lane FROM events WHERE lane >= ?",
            SPILL_LANE_BASE,
        )
        assert len(lanes) == 2
        assert segment_files(config) == []
