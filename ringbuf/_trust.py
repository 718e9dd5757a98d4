"""
Whose segments and lock files we use: ours or root's, of an allowed group,
never open to other users, never through a symbolic link.
"""

from __future__ import annotations

import errno
import os
import stat

from ringbuf.exceptions import RingUntrusted

# O_NOFOLLOW: a planted symlink must not redirect our open (and the
# fchmod/fchown that may follow it) to some other file.
OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def allowed_gid(group: int | None) -> int:
    """The group that may hold group bits: ``group``, else our own."""
    return os.getegid() if group is None else group


def open_existing(path: str, what: str) -> int:
    """Open ``path`` read-write without following a symlink.

    Raises:
        FileNotFoundError: nothing there.
        RingUntrusted: ``path`` is a symbolic link.
    """
    try:
        return os.open(path, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise RingUntrusted(
            f"{what} {path} is a symbolic link, which ringbuf never "
            f"follows: remove it (rm {path}, as root or its owner) or "
            "choose another ring name"
        ) from exc


def set_access(fd: int, mode: int, group: int | None) -> None:
    """Give a file we created ``group`` and exactly ``mode``.

    Through the descriptor, so never through a symlink; explicitly, as
    the umask would have narrowed the mode given to open().
    """
    # Only when the file did not get the group already (its creator's
    # group): a hardened service (systemd's SystemCallFilter=~@privileged)
    # may not call fchown at all, and needs not.
    if group is not None and os.fstat(fd).st_gid != group:
        os.fchown(fd, -1, group)
    os.fchmod(fd, mode)


def check(fd: int, path: str, what: str, group: int | None) -> None:
    """Refuse a file another user could have planted or can read.

    Args:
        fd: the open file.
        path: its path, for the message.
        what: "segment" or "lock file", for the message.
        group: the gid allowed to own group bits (None: our egid); a
            file of that group may also belong to another of its users.

    Raises:
        RingUntrusted: not a regular file, any permission bit for others,
            owned by a user other than us or root (outside ``group``), or
            group bits for another group.
    """
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    gid = allowed_gid(group)
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif mode & 0o007:
        problem = "grants access to other users"
    elif info.st_uid not in (os.geteuid(), 0) and not (
        group is not None and info.st_gid == group
    ):
        problem = f"belongs to uid {info.st_uid}, neither us nor root"
    elif mode & 0o070 and info.st_gid != gid:
        problem = f"grants access to group {info.st_gid}, not {gid}"
    else:
        return
    raise RingUntrusted(
        f"{what} {path} (owner uid {info.st_uid}, gid {info.st_gid}, mode "
        f"{mode:04o}) {problem}: another user may have planted it. Remove "
        f"it (rm {path}, as root or its owner) or choose another ring name"
    )
