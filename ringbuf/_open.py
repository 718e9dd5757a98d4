"""
Make a ring's mapped lanes from its name: create a segment and write its
header, or attach to one and validate it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import time

import numpy as np
import numpy.typing as npt

from ringbuf import _lanelock, _layout, _shm
from ringbuf._lanes import Lanes
from ringbuf._layout import Geometry, check_int
from ringbuf.exceptions import (
    RingArgumentError,
    RingCorrupt,
    UnsupportedPlatform,
)

DEFAULT_MODE = 0o600
GROUP_MODE = 0o660
_ATTACH_WAIT_S = 1.0  # how long a creator may take to size and fill in
_HEADER_POLL_S = 0.005
# Machines with x86-64's store and load order (TSO), see the Ring docstring.
TSO_MACHINES = frozenset({"x86_64", "AMD64", "amd64"})
_machine = platform.machine  # tests replace it to play another CPU


def check_machine() -> None:
    """Refuse CPUs on which the ring's lock-free publication is unsafe.

    Raises:
        UnsupportedPlatform: not x86-64 (readers could see a new head
            before the record under it, and store torn records).
    """
    machine = _machine()
    if machine not in TSO_MACHINES:
        raise UnsupportedPlatform(
            f"ringbuf runs on x86-64 only, this machine is {machine!r}: "
            "its lock-free ring needs x86-64's store order (Python cannot "
            "issue the fences weaker CPUs need)"
        )


def create(
    name: str,
    dtype: npt.DTypeLike,
    lanes: int,
    capacity_records: int,
    mode: int | None,
    group: int | None,
) -> Lanes:
    """Create a segment and its lock file; see ``Ring.create``."""
    check_machine()
    _layout.validate_name(name)
    record_dtype = _layout.structured(dtype)
    check_int("lanes", lanes, 1, _layout.MAX_LANES)
    check_int(
        "capacity_records", capacity_records, 1, _layout.MAX_CAPACITY_RECORDS
    )
    mode = _mode(mode, group)
    geometry = Geometry(record_dtype.itemsize, lanes, capacity_records)
    os.close(
        _lanelock.open_file(
            _layout.lock_path(name),
            mode,
            group,
            allowed_group=group,
            repair=True,
        )
    )
    segment = _shm.create(name, geometry.size_bytes, mode, group)
    _write_header(segment, geometry, record_dtype)
    return Lanes(segment, record_dtype, geometry, group)


def attach(name: str, dtype: npt.DTypeLike, group: int | None) -> Lanes:
    """Attach to a segment and check its header; see ``Ring.attach``."""
    check_machine()
    _layout.validate_name(name)
    record_dtype = _layout.structured(dtype)
    if group is not None:
        check_int("group", group, 0, 2**32 - 2)
    deadline = time.monotonic() + _ATTACH_WAIT_S
    segment = _shm.attach(name, deadline, group)
    try:
        words = _read_header(segment, deadline)
        geometry = _layout.parse_header(
            name, words, segment.size_bytes, record_dtype
        )
    except BaseException:
        segment.close()
        raise
    return Lanes(segment, record_dtype, geometry, group)


def _mode(mode: int | None, group: int | None) -> int:
    if group is not None:
        check_int("group", group, 0, 2**32 - 2)
    if mode is None:
        return DEFAULT_MODE if group is None else GROUP_MODE
    check_int("mode", mode, 0, 0o770)
    if mode & 0o007:
        raise RingArgumentError(
            f"mode {mode:04o} grants access to other users, and attachers "
            "refuse such a ring: use 0600, or 0660 with a group"
        )
    return mode


def _write_header(
    segment: _shm.Segment, geometry: Geometry, dtype: np.dtype[np.void]
) -> None:
    words = segment.words
    assert words is not None  # a fresh segment
    words[_layout.H_VERSION] = _layout.LAYOUT_VERSION
    words[_layout.H_RECORD_BYTES] = geometry.record_bytes
    words[_layout.H_LANES] = geometry.lanes
    words[_layout.H_CAPACITY] = geometry.capacity_records
    words[_layout.H_FINGERPRINT] = _layout.dtype_fingerprint(dtype)
    words[_layout.H_EPOCH] = secrets.randbits(63)
    words[_layout.H_CREATED_NS] = time.time_ns()
    words[_layout.H_MAGIC] = _layout.MAGIC
    header = np.array(words[: _layout.HEADER_WORDS], np.uint64)
    # Attachers wait for a valid checksum, so it is the last store.
    words[_layout.H_CHECKSUM] = _layout.header_checksum(header)


def _read_header(
    segment: _shm.Segment, deadline: float
) -> npt.NDArray[np.uint64]:
    assert segment.words is not None  # just attached
    while True:
        words = np.array(segment.words[: _layout.HEADER_WORDS], np.uint64)
        if _layout.header_complete(words):
            return words
        if time.monotonic() > deadline:
            raise RingCorrupt(
                f"ring {segment.name!r} has a damaged or unfinished header: "
                "unlink it (no process may be using it) and create it again"
            )
        time.sleep(_HEADER_POLL_S)  # a creator may still be writing the header


def unlink(name: str) -> bool:
    """Remove a ring's segment and lock file by name; False if gone.

    Raises:
        RingNameError: unsafe name.
    """
    _layout.validate_name(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_layout.lock_path(name))
    return _shm.unlink(name)
