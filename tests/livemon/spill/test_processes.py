"""
Spill files across real processes: the daemon reads while a producer
appends, and a producer SIGKILLed mid-spill loses nothing it stored.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import types

import pytest

from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader, SpillStatus, SpillWriter
from tests.livemon.spill.conftest import (
    EPOCH,
    LANE,
    RING,
    make_records,
    read_all,
    segment_bytes,
)

METHODS = ["fork", "spawn"]


def produce(spill_dir, count, frames_per_segment, stored) -> None:
    """Spill seqs 0..count-1, publishing each stored seq in ``stored``."""
    writer = SpillWriter(
        spill_dir,
        RING,
        EPOCH,
        LANE,
        RECORD_DTYPE,
        min_free_bytes=0,
        segment_bytes=segment_bytes(frames_per_segment),
        sync_interval_ms=None,
    )
    chunk = 1000
    for start in range(0, count, chunk):
        records = make_records(range(start, min(start + chunk, count)))
        for seq, record in enumerate(records, start):
            if writer.put(seq, record.tobytes()) is not SpillStatus.STORED:
                os._exit(3)
            stored.value = seq  # reported stored: after put returned
    writer.close()


def start_producer(method, spill_dir, count, frames_per_segment):
    """Start ``produce`` in a child (or a thread); return it and its
    stored counter."""
    if method == "thread":
        stored = types.SimpleNamespace(value=-1)
        thread = threading.Thread(
            target=produce,
            args=(str(spill_dir), count, frames_per_segment, stored),
        )
        thread.start()
        return thread, stored
    ctx = multiprocessing.get_context(method)
    stored = ctx.Value("q", -1, lock=False)
    child = ctx.Process(
        target=produce,
        args=(str(spill_dir), count, frames_per_segment, stored),
    )
    child.start()
    return child, stored


def check_increasing(pairs, after_seq):
    """Seqs strictly increase from above ``after_seq``; records match."""
    seqs = [seq for seq, _ in pairs]
    assert all(seq == rec for seq, rec in pairs)
    assert all(a < b for a, b in zip([after_seq, *seqs], seqs, strict=False))


@pytest.mark.parametrize("method", ["thread", *METHODS])
class TestConcurrentRead:
    """A reader follows a producer that is still appending."""

    def test_reads_while_producer_appends(self, method, spill_dir):
        """Every seq arrives once, in order; no in-progress frame is bad."""
        count = 30_000
        child, _ = start_producer(method, spill_dir, count, 64)
        reader = SpillReader(spill_dir, RING, RECORD_DTYPE)
        seen: list[int] = []
        hwm, reads_while_alive = -1, 0
        while True:
            alive = child.is_alive()
            pairs = read_all(reader, after_seq=hwm)
            check_increasing(pairs, hwm)
            seen.extend(seq for seq, _ in pairs)
            if pairs:
                hwm = seen[-1]
                reads_while_alive += alive
            for segment in reader.segments(EPOCH, LANE):
                reader.retire(segment, hwm)
            if not alive:
                break
        child.join(timeout=60)
        assert getattr(child, "exitcode", 0) == 0
        assert seen == list(range(count))
        assert (reader.bad_frames, reader.torn_frames) == (0, 0)
        assert reader.segments(EPOCH, LANE) == []
        assert reads_while_alive > 0


@pytest.mark.parametrize("method", METHODS)
class TestKilledProducer:
    """SIGKILL mid-spill: everything reported stored is read back."""

    def test_sigkill_mid_spill(self, method, spill_dir):
        """Seqs up to the last reported one all come back, none twice."""
        child, stored = start_producer(method, spill_dir, 10**8, 50)
        while stored.value < 5000 and child.is_alive():
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL
        reported = stored.value
        reader = SpillReader(spill_dir, RING, RECORD_DTYPE)
        pairs = read_all(reader)
        check_increasing(pairs, -1)
        seqs = [seq for seq, _ in pairs]
        # The put running at the kill may have published one more.
        assert seqs[: reported + 1] == list(range(reported + 1))
        assert len(seqs) <= reported + 2
        assert (reader.bad_frames, reader.torn_frames) == (0, 0)
        for segment in reader.segments(EPOCH, LANE):
            assert reader.retire(segment, seqs[-1])
