"""
Real mounts for tests of full and read-only disks (root only, as CI is).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def tmpfs(where: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """A real tmpfs of ``size`` mounted at ``where``, unmounted after."""
    if os.geteuid() != 0:
        raise AssertionError("this test mounts a tmpfs: run it as root")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
