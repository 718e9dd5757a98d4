"""
Running this checkout as another user (``nobody``, a group member): the
venv's interpreter lives under /root, which other users cannot enter, so
they run the system's Python with this checkout and a site-packages of
that Python's version (numpy is compiled per version) on the path.
"""

from __future__ import annotations

import functools
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


@functools.cache
def interpreter() -> tuple[str, str]:
    """(an interpreter anyone may run, the PYTHONPATH it needs)."""
    version = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    prefixes = [pathlib.Path(sys.prefix), *sorted(ROOT.glob(".venv*"))]
    for prefix in prefixes:
        site = prefix / "lib" / f"python{version}" / "site-packages"
        if (site / "numpy").is_dir():
            return SYSTEM_PYTHON, f"{ROOT}:{site}"
    pytest.fail(
        f"running as another user needs {SYSTEM_PYTHON} ({version}) and a "
        f"venv of Python {version} with numpy (here or in {ROOT}/.venv*): "
        "the README's test command makes one"
    )


def run(
    user: int,
    args: list[str],
    env: dict[str, str],
    home: str = "/nonexistent",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python args...`` as ``user`` (its own group, no others) from
    /, and capture it; ``env`` gains the PYTHONPATH it needs and HOME."""
    python, path = interpreter()
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            python,
            *args,
        ],
        env=dict(env, PYTHONPATH=path, HOME=home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
