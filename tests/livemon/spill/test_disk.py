"""
A full disk, for real: a 1 MiB tmpfs where the producer gets DISK_FULL at
segment creation, never blocks, never raises, and loses nothing stored.
"""

from __future__ import annotations

from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader, SpillStatus, SpillWriter
from tests.livemon.spill.conftest import (
    EPOCH,
    LANE,
    RING,
    make_records,
    read_all,
)

SEGMENT = 300 * 1024  # three fit in 1 MiB, a fourth does not


class TestDiskFull:
    """ENOSPC at preallocation becomes DISK_FULL drops, counted."""

    def test_enospc_on_tmpfs(self, tmpfs, caplog):
        """Puts past the disk return DISK_FULL; the rest reads back."""
        spill_dir = tmpfs / "spill"
        writer = SpillWriter(
            spill_dir,
            RING,
            EPOCH,
            LANE,
            RECORD_DTYPE,
            segment_bytes=SEGMENT,
            min_free_bytes=0,
            retry_interval_ms=0,
        )
        records = make_records(range(5000))
        statuses = [
            writer.put(seq, rec.tobytes()) for seq, rec in enumerate(records)
        ]
        stored = [
            s for s, st in enumerate(statuses) if st is SpillStatus.STORED
        ]
        refused = {st for st in statuses if st is not SpillStatus.STORED}
        assert refused == {SpillStatus.DISK_FULL}
        # The kernel's ENOSPC from posix_fallocate, not a floor check.
        assert "No space left on device" in caplog.text
        assert stored == list(range(len(stored)))
        assert writer.drops[SpillStatus.DISK_FULL] == 5000 - len(stored)
        writer.close()
        reader = SpillReader(spill_dir, RING, RECORD_DTYPE)
        assert [s for s, _ in read_all(reader)] == stored
        # No half-made segment is left behind by the failed creations.
        lane = next((spill_dir / RING).iterdir())
        names = [p.name for p in next(lane.iterdir()).iterdir()]
        assert all(name.endswith(".lms") for name in names)

    def test_free_space_floor_on_tmpfs(self, tmpfs):
        """A floor above what is free refuses before the disk is full."""
        writer = SpillWriter(
            tmpfs / "spill",
            RING,
            EPOCH,
            LANE,
            RECORD_DTYPE,
            segment_bytes=SEGMENT,
            min_free_bytes=512 * 1024,
        )
        records = make_records(range(3000))
        statuses = [
            writer.put(seq, rec.tobytes()) for seq, rec in enumerate(records)
        ]
        assert SpillStatus.DISK_FULL in statuses
        # One segment fits above the floor, the second would not.
        assert statuses.count(SpillStatus.STORED) == (SEGMENT - 128) // 352
        writer.close()
