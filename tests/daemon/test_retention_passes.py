"""
The daemon's retention schedule: a pass at start, then hourly; a reread
configuration is used by the next batch; status reads it all.  And the
newest row always stays, so SQLite never hands its id out again.
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest

from daemon.retention import NS_PER_DAY
from daemon.retention_passes import RetentionPasses
from daemon.status import retention_lines
from daemon.store import Store
from livemon.config import load_config
from tests.daemon.test_retention import events_at, identities

OLD = time.time_ns() - 100 * NS_PER_DAY


@pytest.fixture
def store(tmp_path):
    """50 events 100 days old, lane 5."""
    store = Store(str(tmp_path / "unified.db"))
    store.write(1, [], [events_at(OLD + np.arange(50))])
    yield store
    store.close()


def run_pass(passes, store):
    """Loop turns until the pass finishes, as the daemon's loop does."""
    for _ in range(100):
        passes.turn(store)
        if not passes.figures()["running"]:
            return
        passes._retention._resume_at = 0.0  # no pause between batches
    raise AssertionError("the pass did not finish")


def config(tmp_path, days):
    return load_config(
        {"retention_days": days, "archive_dir": str(tmp_path / "archive")},
        env={},
    )


def archived(tmp_path) -> set[tuple[int, int, int]]:
    files = glob.glob(os.path.join(tmp_path, "archive", "*.db"))
    return set().union(set(), *(identities(a) for a in files))


def test_first_pass_at_once_then_hourly(store, tmp_path):
    passes = RetentionPasses(config(tmp_path, 90), lambda table: [])
    assert passes.figures()["last_pass_at"] is None
    run_pass(passes, store)
    # All but the newest: deleting it would give its id out again.
    assert identities(store.path) == {(1, 5, 49)}
    after = passes.figures()
    assert not after["running"] and after["last_pass_at"] is not None
    assert 3590 <= after["next_pass_in_s"] <= 3600
    store.write(1, [], [events_at(OLD + 100 + np.arange(5), lane=6)])
    passes.turn(store)  # not due yet: nothing moves
    assert len(identities(store.path)) == 6
    passes._due_at = 0.0  # an hour later
    run_pass(passes, store)
    assert identities(store.path) == {(1, 6, 4)}
    # The same month's archive again, every row once under its own id.
    assert len(archived(tmp_path)) == 54


def test_reread_configuration_is_used(store, tmp_path):
    passes = RetentionPasses(config(tmp_path, 365), lambda table: [])
    run_pass(passes, store)
    assert len(identities(store.path)) == 50  # younger than 365 days
    passes.reconfigure(config(tmp_path, 30))
    passes._due_at = 0.0
    run_pass(passes, store)
    assert len(identities(store.path)) == 1
    assert passes.figures()["older_than_days"] == 30


def test_an_archive_dir_that_is_a_file_is_retentions_trouble(store, tmp_path):
    """``archive_dir`` a file (FileExistsError): the pass fails alone, said
    in its figures and status line; the rows stay, nothing is raised to
    the loop (which took it for the database and reopened it), and it is
    tried again within minutes, then goes through."""
    (tmp_path / "archive").write_text("not a directory")
    passes = RetentionPasses(config(tmp_path, 90), lambda table: [])
    passes.turn(store)
    failed = passes.figures()
    assert "FileExistsError" in failed["last_error"]
    assert not failed["running"]
    assert 0 < failed["next_pass_in_s"] <= 300
    assert "FAILED: FileExistsError" in retention_lines(failed)[0]
    assert len(identities(store.path)) == 50
    (tmp_path / "archive").unlink()
    passes._due_at = 0.0
    run_pass(passes, store)
    assert passes.figures()["last_error"] is None
    assert identities(store.path) == {(1, 5, 49)}
