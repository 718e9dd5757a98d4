"""
Per-lane ownership through open-file-description byte-range locks.

A producer holds byte ``lane`` of the ring's lock file for as long as it owns
the lane; the kernel drops the lock when the process dies.  OFD locks (not
classic POSIX ``lockf``) are used because they conflict between two writers
of one process and are not dropped when some other descriptor of the same
file is closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator

from ringbuf import _trust

# struct flock on Linux x86-64: l_type, l_whence, l_start, l_len, l_pid,
# padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


def _flock(kind: int, lane: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, lane, 1, 0)


def open_file(
    path: str,
    mode: int,
    group: int | None,
    *,
    allowed_group: int | None,
    repair: bool = False,
) -> int:
    """Open the lock file (creating it if missing); return a new descriptor.

    Args:
        path: the lock file.
        mode: permission bits if it has to be created (or repaired).
        group: its group then, or None for ours.
        allowed_group: the gid trusted besides ours (``_trust.check``).
        repair: also give an existing file of ours ``mode`` and ``group``
            (the creator of a ring does this).

    Raises:
        RingUntrusted: a symlink, or a file another user may have planted.
    """
    while True:
        try:
            fd = _trust.open_existing(path, "lock file")
            fix = repair and os.fstat(fd).st_uid == os.geteuid()
            break
        except FileNotFoundError:
            pass
        # Missing: new ring, or someone deleted it under a live segment.
        # Recreating it is all we can do; a producer still holding a lock
        # on the deleted file no longer excludes new claims.
        try:
            flags = _trust.OPEN_FLAGS | os.O_CREAT | os.O_EXCL
            fd = os.open(path, flags, mode)
            fix = True
            break
        except FileExistsError:
            continue  # another process recreated it first: open that
    try:
        if fix:
            _trust.set_access(fd, mode, group)
        _trust.check(fd, path, "lock file", allowed_group)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


@contextlib.contextmanager
def held(fd: int, byte: int) -> Iterator[None]:
    """Hold the lock on ``byte`` for a block, waiting for it if need be.

    For short, rare critical sections only (never on the hot path).
    """
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, byte))
    try:
        yield
    finally:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))
