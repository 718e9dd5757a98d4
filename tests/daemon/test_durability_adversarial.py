"""
An adversary against spill replay's durability: a database disk that
fills while a replay step commits, with real spill files, a real SQLite
file on a real (small) tmpfs, and real shared nothing else.

Each test failed before its fix; what it proves is in its docstring.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from daemon import replay as replay_module
from daemon.replay import SpillReplayer
from daemon.store import Store
from livemon import record as rec
from livemon.spill import LaneSpill, _format
from tests.livemon.helpers import synthetic_records
from tests.mounts import tmpfs

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

RING = "advd-durable"
EPOCH = 0x0ADD_0000_0000_0001
PER_LANE = 3000  # records a lane spills: two lanes' rows overflow the disk


def spill_lanes(spill_dir: pathlib.Path, lanes: tuple[int, ...]) -> int:
    """Spill ``PER_LANE`` varied records (agent lists of one to three
    agents: list labels to store) and their labels on each of ``lanes``,
    as producers with full ring lanes would; return the records."""
    for lane in lanes:
        records, texts = synthetic_records(PER_LANE, lane, 1_700 * 10**15, 10)
        labels = map(rec.label_record, texts.values())
        for ring, dtype, items in (
            (RING + ".labels", rec.LABEL_DTYPE, labels),
            (RING, rec.RECORD_DTYPE, (r.tobytes() for r in records)),
        ):
            spill = LaneSpill.open(
                spill_dir, ring, EPOCH, lane, dtype, min_free_bytes=0
            )
            for item in items:
                spill.put(item)
            spill.close()
    return PER_LANE * len(lanes)


def fill(mount: pathlib.Path, leave: int) -> pathlib.Path:
    """Fill ``mount`` with one file until ``leave`` bytes stay free."""
    info = os.statvfs(mount)
    filler = mount / "filler"
    filler.write_bytes(b"\0" * max(0, info.f_bavail * info.f_frsize - leave))
    return filler


def missing_lists(store: Store) -> int:
    """List label ids that stored events name but ``labels`` lacks."""
    sql = " UNION ".join(
        f"SELECT {column} AS id FROM events WHERE {column} != 0"
        for column in rec.LIST_FIELDS
    )
    row = store.db.execute(
        f"SELECT count(*) FROM ({sql}) WHERE id NOT IN "
        "(SELECT label_id FROM labels)"
    ).fetchone()
    return int(row[0])


HEADROOM = 1 << 20  # db_min_free_bytes: twice this test's step's WAL


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """Two lanes spilled, a store on an 8 MiB tmpfs with a headroom, and
    replay writing in parts of half a lane: ``(replayer, store, mount,
    records)``."""
    records = spill_lanes(tmp_path / "spill", (1, 2))
    # Parts of half a lane: the step's first parts are written (and their
    # list labels learned) before its COMMIT.
    monkeypatch.setattr(replay_module, "WRITE_RECORDS", PER_LANE // 2)
    with tmpfs(tmp_path / "db", "8M") as mount:
        store = Store(str(mount / "livemon.db"), min_free_bytes=HEADROOM)
        replayer = SpillReplayer(tmp_path / "spill", RING, store)
        yield replayer, store, mount, records
        store.close()


def filling_during_the_step(replayer: SpillReplayer, mount: pathlib.Path):
    """Have another writer take the disk's last bytes while the step's
    transaction is open (once its first lane is read), as a log or a
    backup beside the database would; return the filler's path."""
    read = replayer.events.read
    filled: list[pathlib.Path] = []

    def read_then_fill(epoch: int, lane: int, after: int = -1):
        if lane == 2 and not filled:  # the first step only
            filled.append(fill(mount, 0))
        return read(epoch, lane, after)

    replayer.events.read = read_then_fill  # type: ignore[method-assign]
    return mount / "filler"


class TestDiskFullWhileReplaying:
    def test_a_failed_commit_leaves_no_event_naming_a_missing_list(self, disk):
        """The disk fills while a step's transaction is open: its COMMIT
        fails and rolls everything back, list labels included.  Once
        space is back the events go in, and every agent list they name
        is stored with them: the store's list cache must not keep what
        the rollback undid (it did: 172 lists named, never stored)."""
        replayer, store, mount, records = disk
        filler = filling_during_the_step(replayer, mount)
        assert replayer.step() == 0
        assert "full" in (replayer.last_error or "")
        count = "SELECT count(*), count(DISTINCT seq) FROM events"
        assert store.db.execute(count).fetchone() == (0, 0)
        filler.unlink()
        while replayer.step():
            pass
        assert replayer.last_error is None
        assert store.db.execute(count).fetchone() == (records, records)
        assert missing_lists(store) == 0


QUARANTINE_ONE = """
import sys
import numpy as np
from daemon.quarantine import Quarantine
from livemon.record import RECORD_DTYPE
quarantine = Quarantine(sys.argv[1])
quarantine.add("advd-q", 1, 7, np.zeros(2, RECORD_DTYPE), "adversary")
print(quarantine.records)
"""


class TestQuarantineFile:
    """``<db>.quarantine.jsonl`` is a path in the database's directory:
    whatever was put there, setting records aside counts them and goes
    on, writing into a regular file of its own only."""

    def quarantine(self, path: pathlib.Path) -> str:
        """Set two records aside into ``path`` in a process of its own
        (a hang is a failure, not a stuck test); return what it printed."""
        run = subprocess.run(
            [sys.executable, "-c", QUARANTINE_ONE, str(path)],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
            check=True,
        )
        return run.stdout.strip()

    def test_a_fifo_does_not_hang_the_daemon(self, tmp_path):
        """A FIFO nobody reads: opening it to write would block forever
        (the drain loop with it); the records are counted instead."""
        path = tmp_path / "livemon.db.quarantine.jsonl"
        os.mkfifo(path)
        assert self.quarantine(path) == "2"

    def test_a_symlink_is_not_followed(self, tmp_path):
        """A symlink planted there (to a file the daemon, often root, may
        write) is not written through; the records are counted."""
        victim = tmp_path / "victim"
        victim.write_text("keep\n")
        path = tmp_path / "livemon.db.quarantine.jsonl"
        path.symlink_to(victim)
        assert self.quarantine(path) == "2"
        assert victim.read_text() == "keep\n"


class TestDurableBeforeUnlink:
    def test_the_wal_beside_a_symlinked_database_is_fsynced(
        self, tmp_path, monkeypatch
    ):
        """The database named through a symlink (a supported layout: its
        WAL is beside the file, not the link): the WAL holding the step's
        commits is fsynced before the step's first unlink, else a power
        loss keeps neither the rows nor the segment.  Calls recorded as
        they pass to the real os.fsync and os.unlink."""
        real = tmp_path / "data" / "livemon.db"
        real.parent.mkdir()
        link = tmp_path / "link.db"
        link.symlink_to(real)
        records = spill_lanes(tmp_path / "spill", (1,))
        calls: list[tuple[str, str]] = []
        real_fsync, real_unlink = os.fsync, os.unlink

        def fsync(fd: int) -> None:
            calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def unlink(path, *args, **kwargs):
            calls.append(("unlink", str(path)))
            real_unlink(path, *args, **kwargs)

        store = Store(str(link))
        try:
            monkeypatch.setattr(os, "fsync", fsync)
            monkeypatch.setattr(os, "unlink", unlink)
            replayer = SpillReplayer(tmp_path / "spill", RING, store)
            assert replayer.step() == records
            first = next(i for i, c in enumerate(calls) if c[0] == "unlink")
            assert ("fsync", str(real) + "-wal") in calls[:first]
        finally:
            store.close()


def read_only(mount: pathlib.Path) -> None:
    """Remount the tmpfs at ``mount`` read-only (as a failing disk's
    filesystem is): nothing in it can be renamed or unlinked."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


class TestOneLaneUnwritable:
    """A lane's directory on a filesystem that went read-only: what it
    holds cannot be set aside or unlinked, and every other lane is still
    replayed and retired."""

    def lane_dir(self, spill_dir: pathlib.Path, lane: int) -> pathlib.Path:
        return spill_dir / RING / _format.epoch_name(EPOCH) / f"{lane:05d}"

    def test_a_damaged_segment_there_holds_up_no_other_lane(self, tmp_path):
        """Its damaged segment cannot be renamed aside (EROFS): skipped,
        not raised at every step, so the other lane's records go in."""
        spill_dir = tmp_path / "spill"
        records = spill_lanes(spill_dir, (2,))
        stuck = self.lane_dir(spill_dir, 1)
        with tmpfs(stuck, "1M"):
            (stuck / _format.segment_name(5)).write_bytes(b"\xa5" * 4096)
            read_only(stuck)
            store = Store(str(tmp_path / "livemon.db"))
            try:
                replayer = SpillReplayer(spill_dir, RING, store)
                moved = sum(replayer.step() for _ in range(3))
                assert replayer.last_error is None
                assert moved == records
                assert replayer.events.bad_segments == 0  # still there
                assert not self.lane_dir(spill_dir, 2).exists()  # retired
            finally:
                store.close()

    def test_replayed_segments_there_hold_up_no_other_lane(self, tmp_path):
        """Its segments are replayed but cannot be unlinked (EROFS): the
        other lane's are still retired, and nothing is stored twice."""
        spill_dir = tmp_path / "spill"
        stuck = self.lane_dir(spill_dir, 1)
        with tmpfs(stuck, "4M"):
            records = spill_lanes(spill_dir, (1, 2))
            read_only(stuck)
            store = Store(str(tmp_path / "livemon.db"))
            try:
                replayer = SpillReplayer(spill_dir, RING, store)
                moved = sum(replayer.step() for _ in range(3))
                assert moved == records
                assert not self.lane_dir(spill_dir, 2).exists()  # retired
                assert list(stuck.iterdir())  # kept: read-only
                count = "SELECT count(*), count(DISTINCT seq) FROM events"
                assert store.db.execute(count).fetchone() == (
                    records,
                    records,
                )
            finally:
                store.close()


SWAP_IN_A_FIFO = """
import os, sys
from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader
reader = SpillReader(sys.argv[1], sys.argv[2], RECORD_DTYPE)
[key] = reader.lanes()
[segment] = reader.segments(*key)
os.unlink(segment.path)  # listed, then swapped for a FIFO nobody writes
os.mkfifo(segment.path)
for step in (lambda: reader.scan(segment), lambda: reader.retire(segment, -1),
             lambda: reader.published(segment)):
    try:
        step()
    except OSError as exc:  # a retry at the next step: not a hang
        print(type(exc).__name__)
print("done", reader.segments(*key))
"""


def test_a_segment_swapped_for_a_fifo_does_not_hang_the_reader(tmp_path):
    """A segment replaced by a FIFO between its listing and its reading:
    opening it to read would block until someone writes to it (forever,
    and the daemon with it); it is an error of that step at most, and
    the next listing passes it over.  In a process of its own: a hang
    fails the test rather than stopping it."""
    spill_dir = tmp_path / "spill"
    spill = LaneSpill.open(spill_dir, RING, EPOCH, 1, rec.RECORD_DTYPE)
    spill.put(bytes(rec.RECORD_DTYPE.itemsize))
    spill.close()
    run = subprocess.run(
        [sys.executable, "-c", SWAP_IN_A_FIFO, str(spill_dir), RING],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=ROOT,
        check=True,
    )
    assert run.stdout.strip().endswith("done []"), run.stdout


def test_labels_still_spilled_go_into_a_new_database_file(tmp_path):
    """The database deleted and created anew under the daemon (it reopens
    a fresh file): events still in spill files are replayed into it, and
    so must the labels still in theirs, else its events name agents and
    categories whose texts it never gets (the labels' high-water mark is
    kept in memory: it belongs to the file it was committed into)."""
    spill_dir, path = tmp_path / "spill", tmp_path / "livemon.db"
    records, texts = synthetic_records(100, 3, 1_700 * 10**15, 10)
    labels = LaneSpill.open(
        spill_dir, RING + ".labels", EPOCH, 1, rec.LABEL_DTYPE
    )
    events = LaneSpill.open(spill_dir, RING, EPOCH, 1, rec.RECORD_DTYPE)
    try:  # producers still running: their segments stay until sealed
        for text in texts.values():
            labels.put(rec.label_record(text))
        for record in records[:50]:
            events.put(record.tobytes())
        stores = [Store(str(path))]
        replayer = SpillReplayer(spill_dir, RING, lambda: stores[-1])
        assert replayer.step() == 50
        stores[-1].close()
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)
        stores.append(Store(str(path)))
        for record in records[50:]:
            events.put(record.tobytes())
        assert replayer.step() == 100  # every event, into the new file
        stored = {
            text
            for (text,) in stores[-1].db.execute("SELECT text FROM labels")
        }
        assert set(texts.values()) <= stored
        stores[-1].close()
    finally:
        labels.close()
        events.close()
