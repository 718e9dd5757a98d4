"""
The configured group shares the ring: whoever comes first (a root
coordinator, the daemon's user) creates it group-owned, mode 0660, and
members attach; others are refused, never given the records.
"""

from __future__ import annotations

import grp
import json
import os
import pathlib
import stat
import subprocess

from livemon import Monitor
from livemon.config import load_config
from tests import other_users

GROUP = "users"
ROOT = pathlib.Path(__file__).resolve().parents[2]
AS_MEMBER = """
import json, sys
from livemon import Monitor
monitor = Monitor(sys.argv[1])
with monitor.request("q"):
    pass
monitor.close()
print(json.dumps(monitor.counters.__dict__))
"""


def run_as(uid: int, gid: int, ring_name: str) -> dict:
    """Record one request as ``uid``/``gid``; return its counters."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    python, path = other_users.interpreter()
    done = subprocess.run(
        [python, "-c", AS_MEMBER, ring_name],
        env={
            **os.environ,
            "LIVEMON_GROUP": GROUP,
            "PYTHONPATH": path,
            "HOME": "/nonexistent",
        },
        preexec_fn=drop,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class TestGroup:
    def test_root_first_then_a_member(self, ring_name, tmp_path):
        """Root creates the ring for the group; a member of the group (not
        root) records into it; a stranger is refused and counted."""
        gid = grp.getgrnam(GROUP).gr_gid
        config = load_config(
            {"ring": ring_name, "group": GROUP, "db": str(tmp_path / "u")}
        )
        with Monitor(config=config) as monitor:
            with monitor.request("q"):
                pass
            info = os.stat(f"/dev/shm/{ring_name}")
            assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o660)
            member = run_as(65534, gid, ring_name)
            assert member["recorded"] == 1
            stranger = run_as(65534, 65534, ring_name)
            assert stranger["recorded"] == 0
            assert stranger["unavailable"] == 1
