"""
Fixtures for the spill tests: a spill directory, writers that close, a
reader, a small real tmpfs, and helpers that damage files on purpose.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader, SpillWriter, _format

RING = "lmtest-ring"
EPOCH = 0x1234_5678_9ABC_DEF0
LANE = 3
FRAME_BYTES = _format.frame_bytes_for(RECORD_DTYPE.itemsize)


def make_records(seqs: object, dtype: np.dtype = RECORD_DTYPE) -> np.ndarray:
    """Records whose ``request_id`` (or first field) is their seq."""
    seqs = np.asarray(seqs, np.int64)
    out = np.zeros(len(seqs), dtype)
    out[dtype.names[1] if dtype is RECORD_DTYPE else dtype.names[0]] = seqs
    return out


def record_seqs(records: np.ndarray) -> list[int]:
    """The seqs ``make_records`` stored in ``records``."""
    return records["request_id"].tolist()


def segment_bytes(frames: int, record_bytes: int = RECORD_DTYPE.itemsize):
    """A segment size that holds exactly ``frames`` frames."""
    return _format.DATA_OFFSET + frames * _format.frame_bytes_for(record_bytes)


def frame_offset(position: int, frame_bytes: int = FRAME_BYTES) -> int:
    """Byte offset of frame ``position`` in a segment file."""
    return _format.DATA_OFFSET + position * frame_bytes


def flip_bit(path: os.PathLike[str] | str, offset: int, bit: int = 3) -> None:
    """Flip one bit of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def lane_dir(spill_dir: pathlib.Path, epoch: int = EPOCH, lane: int = LANE):
    """The directory of one lane's segments."""
    return (
        spill_dir / RING / _format.epoch_name(epoch) / _format.lane_name(lane)
    )


def read_all(reader: SpillReader, after_seq: int = -1, lane: int = LANE):
    """Every (seq, record seq) the reader yields for the test lane."""
    out = []
    for batch in reader.read(EPOCH, lane, after_seq):
        assert batch.lane == lane
        ids = record_seqs(batch.records)
        out.extend(
            zip(range(batch.first_seq, batch.end_seq), ids, strict=True)
        )
    return out


@pytest.fixture
def spill_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A spill root that does not exist yet (the writer makes it)."""
    return tmp_path / "spill"


@pytest.fixture
def make_writer(
    spill_dir: pathlib.Path,
) -> Iterator[Callable[..., SpillWriter]]:
    """Make writers for the test lane; close them all afterwards."""
    made: list[SpillWriter] = []

    def make(**kwargs: object) -> SpillWriter:
        options: dict[str, object] = {
            "min_free_bytes": 0,
            "segment_bytes": segment_bytes(8),
        }
        options.update(kwargs)
        root = options.pop("spill_dir", spill_dir)
        dtype = options.pop("dtype", RECORD_DTYPE)
        lane = options.pop("lane", LANE)
        writer = SpillWriter(root, RING, EPOCH, lane, dtype, **options)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


@pytest.fixture
def reader(spill_dir: pathlib.Path) -> SpillReader:
    """A reader of the test ring's spill files."""
    return SpillReader(spill_dir, RING, RECORD_DTYPE)
