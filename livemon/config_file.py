"""
Reading livemon's TOML config file (``--config``, ``LIVEMON_CONFIG``):
everything wrong with it is a ConfigError naming the file, never a hang
or another exception (the daemon rereads it on SIGHUP).
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from collections.abc import Collection
from typing import Any

from livemon.exceptions import ConfigError


def read_regular(path: str) -> bytes:
    """The bytes of ``path``, which must be a regular file.

    Opened without blocking, so that a FIFO at the path is refused, not a
    reader (a command, the daemon, ``top``) waiting for a writer for ever.

    Raises:
        OSError: it cannot be read, or is no regular file (EINVAL).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return file.read()


def read_file(path: str, known: Collection[str]) -> dict[str, Any]:
    """The settings in TOML file ``path``: its top level, or its
    ``[livemon]`` table when it has one.

    Raises:
        ConfigError: it cannot be read, is no regular file (a FIFO would
            block the reader: a command, a daemon rereading on SIGHUP),
            no UTF-8 TOML, ``livemon`` is no table or has keys beside it
            (they would be ignored), or a key is not in ``known``.
    """
    try:
        data = tomllib.loads(read_regular(path).decode())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8: {exc}") from exc
    table = data.get("livemon", data)
    if not isinstance(table, dict):
        raise ConfigError(
            f"config file {path}: livemon must be a table ([livemon])"
        )
    beside = sorted(set(data) - {"livemon"}) if table is not data else []
    if beside:
        raise ConfigError(
            f"config file {path}: keys outside [livemon]: "
            f"{beside}; move them under [livemon] (or all to the top level)"
        )
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown keys {unknown}; "
            f"known keys are {sorted(known)}"
        )
    return dict(table)
