"""
Replay step sizes and the fsyncs a step pays: larger steps than the
drain's by default, checked bounds, one directory fsync per lane.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from daemon import replay as replay_module
from daemon.replay import DEFAULT_MAX_RECORDS, STEP_BATCHES, SpillReplayer
from livemon.config import load_config
from livemon.exceptions import SpillConfigError
from livemon.record import RECORD_DTYPE
from ringbuf import Batch
from tests.daemon.test_replay import RING, replay_all, rows, segments, spill


@pytest.fixture
def store(tmp_path):
    """A real store, closed after the test."""
    from daemon.store import Store

    store = Store(str(tmp_path / "livemon.db"))
    yield store
    store.close()


def test_a_step_is_several_drain_batches():
    """The daemon's default replay step is STEP_BATCHES drain batches."""
    config = load_config({"ring": "lmtest-steps"})
    assert STEP_BATCHES > 1
    assert STEP_BATCHES * config.batch_records == DEFAULT_MAX_RECORDS


def test_default_step_takes_the_replayers_max(tmp_path, store):
    """Without a bound a step takes the replayer's ``max_records``."""
    spill(tmp_path / "spill", 700)
    replayer = SpillReplayer(tmp_path / "spill", RING, store, max_records=300)
    assert [replayer.replay_once() for _ in range(4)] == [300, 300, 100, 0]
    assert rows(store) == (700, 700)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_bad_bounds_are_refused(tmp_path, store, bad):
    """A bound that is not a positive int raises, says what it is, and
    is never taken for store trouble to retry."""
    with pytest.raises(SpillConfigError, match="max_records"):
        SpillReplayer(tmp_path / "spill", RING, store, max_records=bad)
    replayer = SpillReplayer(tmp_path / "spill", RING, store)
    with pytest.raises(SpillConfigError, match="positive int"):
        replayer.replay_once(bad)
    with pytest.raises(SpillConfigError):
        replayer.step(bad)
    assert replayer.last_error is None


def test_one_directory_fsync_per_lane_and_the_db_before_unlinks(
    tmp_path, store, monkeypatch
):
    """Several segments of a lane retired in one step: the database is
    fsynced once before the first unlink, the lane's directory once
    after the last (not once per segment)."""
    spill_dir = tmp_path / "spill"
    spill(spill_dir, 900)  # events and labels: several segments each
    lane_segments = {p.parent for p in segments(spill_dir)}
    assert len(segments(spill_dir)) > 2 * len(lane_segments)
    synced: list[str] = []
    unlinked: list[str] = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def unlink(path, *, dir_fd=None):
        unlinked.append(path)
        synced.append("unlink")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    replayer = SpillReplayer(spill_dir, RING, store)
    assert replay_all(replayer) == 900
    assert segments(spill_dir) == []
    assert unlinked  # every segment went
    first = synced.index("unlink")
    assert store.path + "-wal" in synced[:first]  # durable, then unlinked
    dirs = [s for s in synced if s in {str(d) for d in lane_segments}]
    assert sorted(dirs) == sorted(str(d) for d in lane_segments)
    assert replay_module.DEFAULT_MAX_RECORDS >= 900  # all in one step


def test_a_step_writes_in_parts_within_one_transaction(
    tmp_path, store, monkeypatch
):
    """Parts of WRITE_RECORDS, one commit: every record once, and a
    part that fails rolls the whole step back (nothing half-stored)."""
    spill_dir = tmp_path / "spill"
    spill(spill_dir, 900)
    monkeypatch.setattr(replay_module, "WRITE_RECORDS", 200)
    writes = []
    real_write = store.write

    def write(epoch, labels, events, *args):
        writes.append(sum(len(b.records) for b in events))
        if len(writes) == 3:
            raise OSError("injected: the third write fails")
        return real_write(epoch, labels, events, *args)

    monkeypatch.setattr(store, "write", write)
    replayer = SpillReplayer(spill_dir, RING, store)
    assert replayer.step() == 0
    assert "third write" in replayer.last_error
    assert rows(store) == (0, 0)  # the parts before it rolled back too
    assert len(segments(spill_dir)) > 2  # and nothing retired
    writes.clear()
    monkeypatch.setattr(store, "write", real_write)
    assert replay_all(replayer) == 900
    assert rows(store) == (900, 900)
    assert segments(spill_dir) == []


def test_parts_keep_whole_batches_one_epoch_each_in_order():
    events = [
        ((epoch, 0), Batch(0, first, np.zeros(size, RECORD_DTYPE)))
        for epoch, first, size in (
            (1, 0, 150),
            (1, 150, 100),
            (1, 250, 30),
            (2, 0, 30),
            (2, 30, 300),
        )
    ]
    parts = list(replay_module._parts(events, 200))
    assert [(e, [b.first_seq for b in part]) for e, part in parts] == [
        (1, [0, 150]),
        (1, [250]),
        (2, [0, 30]),
    ]
    assert list(replay_module._parts([], 200)) == []
