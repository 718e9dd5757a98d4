"""
Making a segment file: created under a temporary name, locked,
preallocated, headed, mapped, then linked into place; and the spill root.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os

import numpy as np

from livemon.exceptions import SpillDirError
from livemon.spill import _format, _fs


def create(
    lane_fd: int, header: _format.Header, size_bytes: int, mode: int
) -> tuple[int, mmap.mmap]:
    """Create the segment ``header`` describes in the lane's directory.

    Readers never see a half-made segment: it is built as ``<name>.tmp``
    (which readers ignore), locked, preallocated, given its header (and
    every frame its epoch and lane), fsynced, mapped, and only then
    linked to its final name, which never replaces an existing segment;
    the directory is fsynced after.

    Returns:
        The locked descriptor and the shared, writable mapping.

    Raises:
        OSError: ENOSPC or EDQUOT preallocating (a full disk shows here,
            not as SIGBUS on a mapped page), FileExistsError if the
            segment exists, or any other creation error.  Nothing is left
            behind.
    """
    final = _format.segment_name(header.first_seq)
    tmp = final + ".tmp"
    # A stale tmp of this very name holds no frames (frames are only
    # written once the segment has its final name): replace it.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=lane_fd)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _fs.OPEN_FILE
    fd = os.open(tmp, flags, mode, dir_fd=lane_fd)
    mm = None
    try:
        os.fchmod(fd, mode)  # the umask may have masked bits
        if not _fs.lock(fd):
            raise OSError(errno.EAGAIN, f"{tmp} is locked by another")
        os.posix_fallocate(fd, 0, size_bytes)
        os.pwrite(fd, _format.pack_header(header), 0)
        os.fsync(fd)
        mm = mmap.mmap(fd, size_bytes)
        _fill_identity(mm, header)
        os.link(
            tmp,
            final,
            src_dir_fd=lane_fd,
            dst_dir_fd=lane_fd,
            follow_symlinks=False,
        )
        os.unlink(tmp, dir_fd=lane_fd)
        os.fsync(lane_fd)  # the new name survives a power failure
    except BaseException:
        if mm is not None:
            mm.close()
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=lane_fd)
        raise
    return fd, mm


def _fill_identity(mm: mmap.mmap, header: _format.Header) -> None:
    """Write epoch and lane into every frame of a new segment.

    Puts then write only seq, time and record; and every page is touched
    here, once, rather than faulted in by puts one at a time.
    """
    frames = np.ndarray(
        (header.capacity_frames,),
        _format.frame_dtype(header.record_bytes),
        mm,
        _format.DATA_OFFSET,
    )
    frames["epoch"] = header.epoch
    frames["lane"] = header.lane
    del frames  # release the export, or the mmap cannot close


def make_root(path: str, mode: int) -> None:
    """Make the spill root (not its parents) if missing, with ``mode``.

    Raises:
        SpillDirError: it cannot be made, or is not a directory.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SpillDirError(
            exc.errno, f"cannot create spill directory {path!r}: {exc}"
        ) from exc
    else:
        os.chmod(path, mode)
    if not os.path.isdir(path):
        raise SpillDirError(
            errno.ENOTDIR, f"spill directory {path!r} is not a directory"
        )
