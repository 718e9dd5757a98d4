"""
The reader's frame check: one CRC-32 over a run of whole frames, and the
frame-by-frame check it falls back to, agree on which frames are valid.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemon.record import AGENT_RUN_DTYPE, LABEL_DTYPE, RECORD_DTYPE
from livemon.spill import _format, _frames

EPOCH, LANE, FIRST = 7, 2, 100
RECORD_BYTES = 28  # small frames: many positions to hit
SIZE = _format.frame_bytes_for(RECORD_BYTES)


def run_of_frames(count: int, record_bytes: int = RECORD_BYTES) -> bytearray:
    """``count`` whole frames, seqs from FIRST, records of varied bytes."""
    dtype = _format.frame_dtype(record_bytes)
    frames = np.zeros(count, dtype)
    frames["epoch"], frames["lane"] = EPOCH, LANE
    frames["seq"] = np.arange(FIRST, FIRST + count, dtype=np.uint64)
    frames["spilled_ns"] = np.arange(count, dtype=np.uint64) * 977
    data = bytearray(frames.tobytes())
    size = dtype.itemsize
    for i in range(count):
        frame = data[i * size : (i + 1) * size]
        frame[_format.FRAME_PREFIX_BYTES] = i % 251  # records differ
        crc = _format.frame_crc(bytes(frame), size)
        frame[-4:] = _format.CRC.pack(crc)
        data[i * size : (i + 1) * size] = frame
    return data


def check(data: bytes | bytearray, known=None) -> np.ndarray:
    """``valid_frames`` over ``data`` as the reader calls it."""
    dtype = _format.frame_dtype(RECORD_BYTES)
    data = bytes(data)
    return _frames.valid_frames(
        data,
        np.frombuffer(data, dtype),
        epoch=EPOCH,
        lane=LANE,
        first_seq=FIRST,
        crc_at=_format.crc_offset(dtype.itemsize),
        known=known,
    )


def per_frame(data: bytes | bytearray) -> list[bool]:
    """The reference: each frame's own CRC (identity left whole here)."""
    size = _format.frame_bytes_for(RECORD_BYTES)
    out = []
    for i in range(len(data) // size):
        frame = bytes(data[i * size : (i + 1) * size])
        out.append(_format.CRC.unpack(frame[-4:])[0] == zlib.crc32(frame[:-4]))
    return out


@pytest.mark.parametrize(
    "dtype",
    [RECORD_DTYPE, LABEL_DTYPE, AGENT_RUN_DTYPE],
    ids=["events", "labels", "agent_runs"],
)
def test_every_spilled_frame_size_has_a_seed(dtype):
    """A run of whole frames maps the seed to itself, any length; one
    flipped bit anywhere in it does not."""
    size = _format.frame_bytes_for(dtype.itemsize)
    seed = _frames.run_seed(size)
    assert seed is not None
    data = run_of_frames(5, dtype.itemsize)
    assert zlib.crc32(bytes(data), seed) == seed
    assert zlib.crc32(bytes(data[:size]), seed) == seed
    data[size * 3 + 1] ^= 0x10
    assert zlib.crc32(bytes(data), seed) != seed


def test_whole_run_is_valid():
    assert check(run_of_frames(40)).all()


def test_only_new_frames_are_checked_after_a_known_prefix():
    """Frames never change once published: the known prefix's validity
    is kept as it was (even if a scribble hit it since)."""
    data = run_of_frames(30)
    known = check(data[: 10 * SIZE])
    data[5 * SIZE + 40] ^= 1  # inside the known prefix: not checked again
    data[20 * SIZE + 40] ^= 1  # in the new frames: found
    valid = check(data, known)
    assert valid[:10].all()
    assert np.flatnonzero(~valid).tolist() == [20]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.data())
def test_one_flipped_bit_costs_exactly_its_frame(count, data):
    """Anywhere in the run, in any frame: that frame alone is invalid."""
    frames = run_of_frames(count)
    at = data.draw(st.integers(0, len(frames) - 1))
    frames[at] ^= 1 << data.draw(st.integers(0, 7))
    valid = check(frames)
    assert np.flatnonzero(~valid).tolist() == [at // SIZE]


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 40), st.data())
def test_damage_to_several_frames_agrees_with_frame_by_frame(count, data):
    """Several damaged bytes in the records: the run check fails and the
    frame-by-frame check decides, as it alone would."""
    frames = run_of_frames(count)
    body = range(_format.FRAME_PREFIX_BYTES, SIZE)  # identity left whole
    hits = data.draw(
        st.lists(
            st.tuples(st.integers(0, count - 1), st.sampled_from(body)),
            min_size=2,
            max_size=6,
        )
    )
    for frame, offset in hits:
        frames[frame * SIZE + offset] ^= 0xA5
    assert check(frames).tolist() == per_frame(frames)
