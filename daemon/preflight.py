"""
What ``livemon-daemon start`` refuses before it starts anything: settings
no daemon could ever work with on this machine, though each is valid.
"""

from __future__ import annotations

import os

from livemon import ipc
from livemon.config import Config
from livemon.exceptions import ConfigError


def check_headroom(config: Config) -> None:
    """Refuse a ``db_min_free_bytes`` the database's filesystem can never
    have free: the daemon would start, then never add a record.

    Raises:
        ConfigError: it is at least the filesystem's whole size.
    """
    where = os.path.dirname(os.path.abspath(config.db))
    while not os.path.isdir(where):  # created on start
        where = os.path.dirname(where)
    info = os.statvfs(where)
    size = info.f_blocks * info.f_frsize
    if config.db_min_free_bytes >= size:
        raise ConfigError(
            f"db_min_free_bytes ({config.db_min_free_bytes}) is not below "
            f"the size of the filesystem holding {where} ({size}): the "
            "daemon could never add a record; lower it, or leave it unset "
            f"for the default ({Config.db_min_free_bytes})"
        )


def check_directories(config: Config) -> None:
    """Refuse an ``archive_dir`` or ``spill_dir`` that names something
    other than a directory: each pass would fail on it, far from here.

    Raises:
        ConfigError: it exists and is no directory.
    """
    for name, path in (
        ("archive_dir", config.archive_dir),
        ("spill_dir", ipc.spill_root(config)),
    ):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ConfigError(
                f"{name} {path} is not a directory: name a directory (it "
                "is created if missing), or leave it unset for the default"
            )
