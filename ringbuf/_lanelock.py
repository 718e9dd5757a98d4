"""
Per-lane ownership through open-file-description byte-range locks.

A producer holds byte ``lane`` of the ring's lock file for as long as it owns
the lane; the kernel drops the lock when the process dies.  OFD locks (not
classic POSIX ``lockf``) are used because they conflict between two writers
of one process and are not dropped when some other descriptor of the same
file is closed.
"""

from __future__ import annotations

import fcntl
import os
import struct

# struct flock on Linux x86-64 and aarch64: l_type, l_whence, l_start,
# l_len, l_pid, padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


def _flock(kind: int, lane: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, lane, 1, 0)


def create_file(path: str, mode: int) -> None:
    """Create the lock file beside a segment (owner-only unless ``mode``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_file(path: str) -> int:
    """Open the lock file and return a descriptor of its own."""
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def try_lock(fd: int, lane: int) -> bool:
    """Take the lock on ``lane`` without waiting; False if someone holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, lane))
    except (BlockingIOError, PermissionError):
        return False
    return True


def is_locked(fd: int, lane: int) -> bool:
    """Tell whether another descriptor holds ``lane`` (takes no lock)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, lane))
    kind = _FLOCK.unpack(answer)[0]
    return bool(kind != fcntl.F_UNLCK)
