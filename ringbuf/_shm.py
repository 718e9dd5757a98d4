"""
Create, attach and unlink POSIX shared-memory segments that outlive
their users.

Python 3.11's resource tracker unlinks a segment when any process that merely
attached to it exits (CPython gh-82300).  The workaround lives here and only
here: every handle is unregistered from the tracker, and unlinking goes
straight to ``shm_unlink`` so the tracker is never told twice.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import resource_tracker, shared_memory

from ringbuf.exceptions import RingExists, RingNotFound

SHM_DIR = "/dev/shm"


def _untracked(shm: shared_memory.SharedMemory) -> shared_memory.SharedMemory:
    if sys.version_info < (3, 13):
        # The constructor registered the segment for unlinking at our exit:
        # take that back, the segment belongs to the ring, not this process.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def create(
    name: str, size_bytes: int, mode: int
) -> shared_memory.SharedMemory:
    """Create a zero-filled segment with permission bits ``mode``.

    Raises:
        RingExists: a segment of that name exists; attach to it or unlink it.
    """
    try:
        shm = _open(name, create=True, size=size_bytes)
    except FileExistsError as exc:
        raise RingExists(
            f"shared memory {name!r} already exists: attach to it, or unlink "
            "it if no process uses it"
        ) from exc
    # The umask may have narrowed the mode (0660 under umask 022 is 0640).
    os.fchmod(shm._fd, mode)  # type: ignore[attr-defined]
    return shm


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing segment.

    Raises:
        RingNotFound: no such segment; create the ring first.
    """
    try:
        return _open(name, create=False, size=0)
    except FileNotFoundError as exc:
        raise RingNotFound(
            f"no shared memory named {name!r}: create the ring first, "
            "or check the name"
        ) from exc


def unlink(name: str) -> bool:
    """Remove a segment by name; return False if it was already gone."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        return False
    return True


def _open(name: str, *, create: bool, size: int) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(
            name, create=create, size=size, track=False
        )
    return _untracked(
        shared_memory.SharedMemory(name, create=create, size=size)
    )
