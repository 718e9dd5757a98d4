"""
File-system steps of spilling: owner-only directories opened without
following symlinks, directory fsync, the writer's lock, usage sums.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_NOFOLLOW | os.O_CLOEXEC
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def open_dirs(root: str, names: Iterable[str], mode: int | None) -> int:
    """Open ``root/names...``, creating missing ones if ``mode`` is given.

    Every component below ``root`` is opened relative to its parent with
    ``O_NOFOLLOW``, so a symlink planted in the tree is refused (ELOOP or
    ENOTDIR) rather than followed.  A directory this call creates is made
    durable by an fsync of its parent.

    Returns:
        A descriptor of the last directory; the caller closes it.

    Raises:
        OSError: a component is missing (and ``mode`` is None), is not a
            directory, is a symlink, or cannot be created.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                child = os.open(name, OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if mode is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=fd)
                child = os.open(name, OPEN_DIR, dir_fd=fd)
                os.fchmod(child, mode)  # the umask may have masked bits
                os.fsync(fd)  # the new entry survives a power failure
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock(fd: int) -> bool:
    """Take the writer's lock on a segment; False if another holds it.

    ``flock`` locks belong to the open file description: the kernel drops
    them when the writer dies, which is how a reader tells a segment still
    being appended from an abandoned one.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def is_locked(fd: int) -> bool:
    """Tell whether a live writer holds the segment open on ``fd``'s file.

    Takes a shared lock for an instant; writers only lock a segment before
    it has its final name, so this never gets in a writer's way.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def usage_bytes(fd: int, depth: int) -> int:
    """Sum the sizes of regular files below a directory, ``depth`` deep.

    Symlinks are neither followed nor counted.  Entries that vanish
    during the walk (a reader retiring segments) are skipped.
    """
    total = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            elif stat.S_ISDIR(info.st_mode) and depth > 0:
                try:
                    child = os.open(entry.name, OPEN_DIR, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    total += usage_bytes(child, depth - 1)
                finally:
                    os.close(child)
    return total


def free_bytes(fd: int) -> int:
    """Bytes an unprivileged writer may still allocate on ``fd``'s volume."""
    info = os.fstatvfs(fd)
    return info.f_bavail * info.f_frsize


@contextlib.contextmanager
def dir_or_none(root: str, names: Iterable[str]) -> Iterator[int]:
    """Open ``root/names...`` as ``open_dirs`` does; -1 if it is missing."""
    try:
        fd = open_dirs(root, names, None)
    except (FileNotFoundError, NotADirectoryError):
        yield -1
        return
    try:
        yield fd
    finally:
        os.close(fd)


def subdirs(
    root: str, names: Iterable[str], parse: Callable[[str], int | None]
) -> list[tuple[str, int]]:
    """The directories in ``root/names...`` whose name ``parse`` reads."""
    found = []
    with dir_or_none(root, names) as fd:
        if fd < 0:
            return []
        with os.scandir(fd) as entries:
            for entry in entries:
                value = parse(entry.name)
                if value is not None and entry.is_dir(follow_symlinks=False):
                    found.append((entry.name, value))
    return found


def open_regular(name: str, dir_fd: int) -> int:
    """Open a file in ``dir_fd`` to read if it is a regular file; -1 if
    it is missing or anything else.

    Non-blocking: a FIFO renamed over a segment between its listing and
    its reading would block a plain ``open`` until someone writes to it
    (forever, and the reader with it).  Symlinks are not followed.
    """
    flags = os.O_RDONLY | OPEN_FILE | os.O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink swapped in: not followed
            return -1
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    return fd


def remove_stale(dir_fd: int, name: str, age_s: float) -> None:
    """Unlink a leftover file if unlocked and older than ``age_s``."""
    fd = open_regular(name, dir_fd)
    if fd < 0:
        return
    try:
        stale = time.time() - os.fstat(fd).st_mtime > age_s
        if stale and not is_locked(fd):
            # Gone, or a read-only filesystem: left, never the reader's
            # failure (the next listing tries again).
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(fd)
