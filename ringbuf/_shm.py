"""
Open, map and unlink the POSIX shared-memory segments rings live in.

A segment is a file under ``/dev/shm`` opened with ``os.open`` and mapped
with ``mmap`` (Linux only), the same on every Python version.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import time
import weakref

from ringbuf import _layout, _trust
from ringbuf.exceptions import RingCorrupt, RingExists, RingNotFound

# Not multiprocessing.shared_memory: below 3.13 its constructor starts a
# resource_tracker process and registers the segment, which the tracker
# unlinks when any attacher exits (CPython gh-82300); undoing that per
# handle left the tracker process running.  shm_open is open(2) on
# /dev/shm on Linux, so one plain code path serves 3.11 to 3.13+ and keeps
# the fd, which the ownership checks and staleness need anyway.
_SIZE_POLL_S = 0.005


class Segment:
    """This process's mapping of one segment.

    ``buf`` (bytes) and ``words`` (u64) view the whole mapping; both are
    None once closed.  The mapping is released by ``close()`` or, if
    nobody calls it, when the object is collected or the interpreter exits.
    """

    buf: memoryview | None = None
    words: memoryview | None = None
    _finalizer: weakref.finalize | None = None  # type: ignore[type-arg]

    def __init__(self, name: str, fd: int) -> None:
        """Map the open segment ``fd`` (still owned by the caller)."""
        info = os.fstat(fd)
        self.name = name
        self.size_bytes = info.st_size
        self.mode = stat.S_IMODE(info.st_mode)
        self.gid = info.st_gid
        self.identity = (info.st_dev, info.st_ino)
        mapping = mmap.mmap(fd, info.st_size)  # keeps a dup of fd
        self.buf = memoryview(mapping)
        self.words = self.buf.cast("Q")
        self._finalizer = weakref.finalize(
            self, _unmap, mapping, self.words, self.buf
        )

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran."""
        return self.words is None

    def close(self) -> None:
        """Unmap this process's view (the segment stays). Idempotent."""
        self.buf = self.words = None
        if self._finalizer is not None:
            self._finalizer()

    def replaced(self) -> bool:
        """Tell whether the name now maps to no segment or another one."""
        try:
            info = os.stat(_layout.segment_path(self.name))
        except FileNotFoundError:
            return True
        return (info.st_dev, info.st_ino) != self.identity


def _unmap(mapping: mmap.mmap, *views: memoryview) -> None:
    # The views hold exports of the mmap's buffer: release them first, or
    # mmap.close() raises BufferError (the exit-time message of old).
    for view in views:
        view.release()
    # A caller's own memoryview may still export it: then the kernel
    # mapping goes when that view does, which is safe, never dangling.
    with contextlib.suppress(BufferError):
        mapping.close()


def create(
    name: str, size_bytes: int, mode: int, group: int | None
) -> Segment:
    """Create a zero-filled segment with exactly ``mode`` (and ``group``).

    Raises:
        RingExists: a segment of that name exists; attach to it or unlink it.
    """
    path = _layout.segment_path(name)
    try:
        # O_EXCL: a file (or symlink) already there is never reused.
        flags = _trust.OPEN_FLAGS | os.O_CREAT | os.O_EXCL
        fd = os.open(path, flags, mode)
    except FileExistsError as exc:
        raise RingExists(
            f"shared memory {name!r} already exists: attach to it, or unlink "
            "it if no process uses it"
        ) from exc
    try:
        _trust.set_access(fd, mode, group)
        os.ftruncate(fd, size_bytes)
        return Segment(name, fd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def attach(name: str, deadline: float, group: int | None) -> Segment:
    """Attach to an existing segment, waiting until its creator sized it.

    Args:
        name: the segment's name.
        deadline: ``time.monotonic()`` value after which to stop waiting.
        group: the gid allowed besides ours (see ``_trust.check``).

    Raises:
        RingNotFound: no such segment; create the ring first.
        RingUntrusted: the segment may be another user's; the message
            says how to remove it.
        RingCorrupt: the segment stayed empty until the deadline.
    """
    path = _layout.segment_path(name)
    try:
        fd = _trust.open_existing(path, "segment")
    except FileNotFoundError as exc:
        raise RingNotFound(
            f"no shared memory named {name!r}: create the ring first, "
            "or check the name"
        ) from exc
    try:
        _trust.check(fd, path, "segment", group)
        _wait_for_size(name, fd, deadline)
        return Segment(name, fd)
    finally:
        os.close(fd)


def _wait_for_size(name: str, fd: int, deadline: float) -> None:
    # A creator opens the file, then sizes it: in between, it is empty
    # (and mmap would refuse it).  It stays so if the creator died there.
    while os.fstat(fd).st_size < _layout.HEADER_BYTES:
        if time.monotonic() > deadline:
            raise RingCorrupt(
                f"shared memory {name!r} is empty: its creator died before "
                f"sizing it. Unlink it (rm {_layout.segment_path(name)}) "
                "and start again"
            )
        time.sleep(_SIZE_POLL_S)


def unlink(name: str) -> bool:
    """Remove a segment by name; return False if it was already gone."""
    try:
        os.unlink(_layout.segment_path(name))
    except FileNotFoundError:
        return False
    return True
