"""
The previous release's source, extracted from git for the upgrade tests.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

PREVIOUS_RELEASE = "cd12de8"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def extract(where: pathlib.Path, *packages: str) -> pathlib.Path:
    """Put ``packages`` of the previous release under ``where``; fail the
    test, saying what to do, if this checkout lacks that commit."""
    archive = subprocess.run(
        ["git", "archive", PREVIOUS_RELEASE, *packages],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode:
        pytest.fail(
            f"{PREVIOUS_RELEASE} (the previous release) is not in this "
            "checkout: the upgrade test needs the full history (git fetch "
            "--unshallow)"
        )
    subprocess.run(
        ["tar", "-x", "-C", str(where)], input=archive.stdout, check=True
    )
    return where
