"""
SpillReplayer: spilled records into real SQLite exactly once, segments
unlinked only after their last record is committed, damage survived, and
empty lane directories pruned (never one a live producer is using).
"""

from __future__ import annotations

import errno
import os
import pathlib

import pytest

from daemon import replay as replay_module
from daemon.replay import SpillReplayer
from daemon.store import Store
from livemon import record as rec
from livemon.spill import (
    SPILL_LANE_BASE,
    LaneSpill,
    SpillStatus,
    _fs,
    spill_lane,
)
from tests.livemon.helpers import synthetic_records

RING = "lmtest-replay"
EPOCH = 0x0123_4567_89AB_CDEF
LANE = 2
SEGMENT_BYTES = 64 * 1024  # a few hundred records: several segments


@pytest.fixture
def spill_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A spill root (made by the first writer)."""
    return tmp_path / "spill"


@pytest.fixture
def store(tmp_path: pathlib.Path):
    """A real store, closed after the test."""
    store = Store(str(tmp_path / "livemon.db"))
    yield store
    store.close()


def spill(spill_dir, count, *, lane=LANE, seed=1, close=True):
    """Spill ``count`` synthetic records and their labels, as a producer
    with a full lane would; return the writers' seqs of the events."""
    records, texts = synthetic_records(count, seed, 1_700_000_000 * 10**9, 10)
    labels = LaneSpill.open(
        spill_dir,
        RING + ".labels",
        EPOCH,
        lane,
        rec.LABEL_DTYPE,
        segment_bytes=SEGMENT_BYTES,
        min_free_bytes=0,
    )
    events = LaneSpill.open(
        spill_dir,
        RING,
        EPOCH,
        lane,
        rec.RECORD_DTYPE,
        segment_bytes=SEGMENT_BYTES,
        min_free_bytes=0,
    )
    for text in texts.values():
        assert labels.put(rec.label_record(text)) is SpillStatus.STORED
    first = events.next_seq
    for record in records:
        assert events.put(record.tobytes()) is SpillStatus.STORED
    if close:
        labels.close()
        events.close()
        return list(range(first, events.next_seq))
    return events, labels


def rows(store, sql="SELECT count(*), count(DISTINCT seq) FROM events"):
    """One row of a query on the store."""
    return store.db.execute(sql).fetchone()


def segments(spill_dir) -> list[pathlib.Path]:
    """Every segment file left (any tree)."""
    return sorted(pathlib.Path(spill_dir).rglob("*.lms"))


def replay_all(replayer, max_records=20000) -> int:
    """Step until nothing moves; return the events moved."""
    total = 0
    while moved := replayer.replay_once(max_records):
        total += moved
    return total


class TestExactlyOnce:
    """Every spilled record is committed once, under its spill identity."""

    def test_records_land_under_the_spill_lane(self, spill_dir, store):
        """Identity (epoch, SPILL_LANE_BASE + lane, spill seq), labels in."""
        seqs = spill(spill_dir, 1000)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 1000
        got = store.db.execute(
            "SELECT epoch, lane, seq FROM events ORDER BY seq"
        ).fetchall()
        assert got == [(EPOCH, SPILL_LANE_BASE + LANE, s) for s in seqs]
        assert spill_lane(LANE) == SPILL_LANE_BASE + LANE
        unknown = rows(
            store,
            "SELECT count(*) FROM monitoring_events WHERE "
            "actual_agents LIKE '%<unknown%' OR error LIKE '%<unknown%'",
        )
        assert unknown == (0,)
        assert segments(spill_dir) == []
        assert replayer.retired > 2

    def test_replaying_twice_adds_nothing(self, spill_dir, store):
        """A second replayer over the same files finds them committed."""
        spill(spill_dir, 500)
        # Keep the files: no retire, as if every unlink were lost.
        first = SpillReplayer(spill_dir, RING, store)
        first._retire_all = lambda store: None  # type: ignore[method-assign]
        first._retire_labels = lambda keys: None  # type: ignore[method-assign]
        first._retire_events = lambda store, keys: None  # type: ignore[method-assign]
        assert replay_all(first) == 500
        assert segments(spill_dir)
        second = SpillReplayer(spill_dir, RING, store)
        assert replay_all(second) == 0
        assert rows(store) == (500, 500)
        assert segments(spill_dir) == []

    def test_crash_between_commit_and_retire(
        self, spill_dir, store, monkeypatch
    ):
        """Committed, then killed before any unlink: a new replayer adds
        no duplicate and unlinks the segments."""
        spill(spill_dir, 800)

        def crash(*args):
            raise SystemExit("killed after the commit")

        monkeypatch.setattr(replay_module, "retire_lane", crash)
        with pytest.raises(SystemExit):
            SpillReplayer(spill_dir, RING, store).replay_once()
        assert rows(store) == (800, 800)
        monkeypatch.undo()
        again = SpillReplayer(spill_dir, RING, store)
        assert replay_all(again) == 0
        assert rows(store) == (800, 800)
        assert segments(spill_dir) == []

    def test_unlinked_only_once_the_commit_is_on_disk(
        self, spill_dir, store, monkeypatch
    ):
        """The WAL is fsynced before the first unlink of a step (with
        synchronous=NORMAL a commit is not on disk yet): calls recorded
        as they pass to the real os.fsync and os.unlink."""
        spill(spill_dir, 800)
        calls = []
        real_fsync, real_unlink = os.fsync, os.unlink

        def fsync(fd):
            calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def unlink(path, *args, **kwargs):
            calls.append(("unlink", str(path)))
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "unlink", unlink)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 800
        first_unlink = next(i for i, c in enumerate(calls) if c[0] == "unlink")
        assert ("fsync", store.path + "-wal") in calls[:first_unlink]
        assert segments(spill_dir) == []

    def test_an_fsync_that_fails_unlinks_nothing(
        self, spill_dir, store, monkeypatch
    ):
        """EIO making the commit durable (injected: a real disk error
        cannot be made here): the records are committed, the segments
        kept, the error shown; the next step retires them."""
        spill(spill_dir, 300)
        before = segments(spill_dir)

        def fail(fd):
            raise OSError(errno.EIO, "injected I/O error")

        monkeypatch.setattr(replay_module.os, "fsync", fail)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replayer.step() == 0  # the step failed after its commit
        assert "injected I/O error" in replayer.last_error
        assert rows(store) == (300, 300)
        assert replayer.replayed == 300
        assert segments(spill_dir) == before
        monkeypatch.undo()
        replayer._retire_at = 0.0  # the periodic pass, now
        assert replayer.step() == 0  # nothing new; retired
        assert replayer.last_error is None
        assert segments(spill_dir) == []
        assert rows(store) == (300, 300)

    def test_batches_are_bounded_and_resume(self, spill_dir, store):
        """``max_records`` caps a step; the next step goes on from there."""
        spill(spill_dir, 1000)
        replayer = SpillReplayer(spill_dir, RING, store)
        steps = [replayer.replay_once(300) for _ in range(5)]
        assert steps == [300, 300, 300, 100, 0]
        assert rows(store) == (1000, 1000)

    def test_a_live_writer_is_followed_and_its_segment_kept(
        self, spill_dir, store
    ):
        """Records appended between steps come once; the segment being
        written is not unlinked until its writer seals it."""
        events, labels = spill(spill_dir, 100, close=False)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 100
        records, _ = synthetic_records(50, 2, 1_700_000_000 * 10**9, 10)
        for record in records:
            events.put(record.tobytes())
        assert replay_all(replayer) == 50
        assert segments(spill_dir)  # still written to
        events.close()
        labels.close()
        replayer._retire_at = 0.0  # the periodic pass, now
        assert replay_all(replayer) == 0
        assert segments(spill_dir) == []
        assert rows(store) == (150, 150)

    def test_many_lanes_and_owners(self, spill_dir, store):
        """Lanes replay side by side; a later owner's seqs continue."""
        spill(spill_dir, 300, lane=0)
        spill(spill_dir, 300, lane=1)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 600
        spill(spill_dir, 200, lane=0, seed=3)  # the lane's next owner
        assert replay_all(replayer) == 200
        per_lane = store.db.execute(
            "SELECT lane, count(*) FROM events GROUP BY lane ORDER BY lane"
        ).fetchall()
        assert per_lane == [
            (SPILL_LANE_BASE, 500),
            (SPILL_LANE_BASE + 1, 300),
        ]


class TestAbandoned:
    """Segments a killed producer left behind are replayed, then gone."""

    def test_empty_segment_of_a_killed_producer_is_unlinked(
        self, spill_dir, store
    ):
        """Killed right after making a segment: nothing to replay in it,
        and it starts above the HWM, yet it is retired."""
        spill(spill_dir, 50)
        lane_spill = LaneSpill.open(
            spill_dir, RING, EPOCH, LANE, rec.RECORD_DTYPE, min_free_bytes=0
        )
        writer = lane_spill.writer
        assert writer._rotate(lane_spill.next_seq) is SpillStatus.STORED
        writer._abandon()  # its lock gone, unsealed: as after SIGKILL
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 50
        assert segments(spill_dir) == []


class TestTrouble:
    """Damaged files and a missing store never crash the replayer."""

    def test_garbage_segment_is_set_aside(self, spill_dir, store):
        """A file with a segment's name and no header is renamed aside."""
        spill(spill_dir, 100)
        lane_dir = segments(spill_dir)[0].parent
        (lane_dir / f"{2**40:020d}.lms").write_bytes(b"not a segment" * 20)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 100
        assert replayer.backlog()["bad_segments"] >= 1
        assert list(pathlib.Path(spill_dir).rglob("*.bad"))

    def test_no_store_moves_nothing(self, spill_dir):
        """With the store down, records wait in their files."""
        spill(spill_dir, 10)
        replayer = SpillReplayer(spill_dir, RING, lambda: None)
        assert replayer.step() == 0
        assert replayer.backlog()["records"] >= 10

    def test_database_trouble_is_reported_not_raised(
        self, spill_dir, tmp_path
    ):
        """A closed store: ``step`` returns 0 and notes the error."""
        spill(spill_dir, 10)
        store = Store(str(tmp_path / "closed.db"))
        store.close()
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replayer.step() == 0
        assert replayer.last_error is not None

    def test_no_spill_dir_at_all(self, tmp_path, store):
        """A missing spill root is an empty backlog."""
        replayer = SpillReplayer(tmp_path / "nowhere", RING, store)
        assert replayer.step() == 0
        assert replayer.backlog()["records"] == 0


class TestBacklog:
    """What waits, for status: records, bytes, oldest age, per lane."""

    def test_backlog_before_and_after(self, spill_dir, store):
        """Counts every spilled record, then nothing once committed."""
        spill(spill_dir, 400)
        replayer = SpillReplayer(spill_dir, RING, store)
        before = replayer.backlog()
        events = [lane for lane in before["lanes"] if lane["tree"] == "events"]
        assert [(e["epoch"], e["lane"]) for e in events] == [(EPOCH, LANE)]
        assert events[0]["records"] == 400
        assert before["size_bytes"] > 0
        assert before["oldest_age_s"] >= 0
        assert before["bad_frames"] == before["torn_frames"] == 0
        replay_all(replayer)
        after = replayer.backlog()
        assert after["records"] == after["segments"] == 0
        assert after["lanes"] == []


def lane_dirs(spill_dir: pathlib.Path) -> list[str]:
    """Every ring/epoch/lane directory left, relative to the root."""
    return sorted(
        str(p.relative_to(spill_dir))
        for p in spill_dir.glob("*/*/*")
        if p.is_dir()
    )


def epoch_dirs(spill_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in spill_dir.glob("*/*") if p.is_dir())


class TestPrune:
    def test_replayed_lanes_of_no_producer_are_removed(self, spill_dir, store):
        """Both trees' lane directories and the epoch go; rings stay."""
        spill(spill_dir, 500)
        spill(spill_dir, 300, lane=LANE + 1, seed=2)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 800
        replayer._retire_all(store)  # its once-a-second pass, now
        assert lane_dirs(spill_dir) == []
        assert epoch_dirs(spill_dir) == []
        assert sorted(p.name for p in spill_dir.iterdir()) == [
            RING,
            RING + ".labels",
        ]
        assert replayer.backlog()["lanes"] == []

    def test_a_lane_spilling_again_after_its_prune(self, spill_dir, store):
        """A new owner of a pruned lane makes it again; its records are
        replayed too, none taken for ones already committed."""
        spill(spill_dir, 300)
        replayer = SpillReplayer(spill_dir, RING, store)
        replay_all(replayer)
        replayer._retire_all(store)
        assert lane_dirs(spill_dir) == []
        spill(spill_dir, 200, seed=3)
        assert len(lane_dirs(spill_dir)) == 2
        assert replay_all(replayer) == 200
        assert rows(store) == (500, 500)

    def test_a_segment_being_appended_keeps_its_directory(
        self, spill_dir, store
    ):
        """A live producer's lane: its segment keeps the directory."""
        events, labels = spill(spill_dir, 100, close=False)
        replayer = SpillReplayer(spill_dir, RING, store)
        assert replay_all(replayer) == 100
        replayer._retire_all(store)
        assert len(lane_dirs(spill_dir)) == 2
        events.close()
        labels.close()

    def test_a_writer_whose_directory_went_makes_it_again(
        self, spill_dir, monkeypatch
    ):
        """The daemon prunes between the writer making its directories
        and creating the segment in them (injected: the real directories
        removed right after the real ``open_dirs``): the segment is made
        all the same, by the retry."""
        real_open_dirs = _fs.open_dirs
        removed = []

        def open_then_pruned(root, names, mode):
            fd = real_open_dirs(root, names, mode)
            names = tuple(names)
            if not removed and len(names) == 3:
                lane_dir = pathlib.Path(root, *names)
                lane_dir.rmdir()
                lane_dir.parent.rmdir()
                removed.append(lane_dir)
            return fd

        monkeypatch.setattr(_fs, "open_dirs", open_then_pruned)
        lane_spill = LaneSpill.open(
            spill_dir,
            RING,
            EPOCH,
            LANE,
            rec.RECORD_DTYPE,
            segment_bytes=SEGMENT_BYTES,
            min_free_bytes=0,
        )
        record = bytes(rec.RECORD_DTYPE.itemsize)
        assert lane_spill.put(record) is SpillStatus.STORED
        assert removed and removed[0].is_dir()  # made again
        lane_spill.close()
