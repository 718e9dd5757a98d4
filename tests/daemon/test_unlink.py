"""
``livemon-daemon stop --unlink`` removes every shared segment of the
configuration: the events, labels, feedback and agents rings and the
feedback decisions segment, each with its lock file.
"""

from __future__ import annotations

import glob

import numpy as np
import pytest

import ringbuf
from daemon import proc
from daemon.exceptions import DaemonError
from livemon import ipc
from livemon.config import load_config
from livemon.feedback.decisions import Board
from livemon.feedback.leader import lock_path
from tests.daemon.test_cli import run_cli


def _left(ring: str) -> list[str]:
    return sorted(
        glob.glob(f"/dev/shm/{ring}") + glob.glob(f"/dev/shm/{ring}.*")
    )


@pytest.fixture
def config(ring_name, tmp_path):
    """A configuration of its own ring and database."""
    return load_config({"ring": ring_name, "db": str(tmp_path / "u.db")})


def _make_every_segment(config):
    for spec in ipc.every_ring(config):
        ipc.open_ring(config, spec).close()
    Board.open(config)._segment.close()
    with open(lock_path(config), "a"):
        pass  # the feedback leader's lock file, as a leader leaves it


class TestSegments:
    def test_names_every_ring_and_the_verdicts(self, config):
        """The agents ring and the decisions segment are named too."""
        assert ipc.segments(config) == tuple(
            config.ring + suffix
            for suffix in ("", ".labels", ".feedback", ".agents", ".verdicts")
        )


class TestUnlinkRings:
    def test_removes_every_segment_and_lock_file(self, config):
        """Nothing of the configuration is left in /dev/shm."""
        _make_every_segment(config)
        assert len(_left(config.ring)) >= 6  # segments and lock files
        proc.unlink_rings(config)
        assert _left(config.ring) == []

    def test_refused_while_the_agents_ring_holds_records(self, config):
        """Pending agent runs are not thrown away: nothing is removed."""
        _make_every_segment(config)
        try:
            with ipc.open_ring(config, ipc.agents_ring(config)) as ring:
                writer = ring.writer()
                assert writer.put(np.zeros(1, ring.dtype)[0])
                writer.close()
            with pytest.raises(DaemonError, match="still holds records"):
                proc.unlink_rings(config)
            assert config.ring + ".verdicts" in [
                p.rsplit("/", 1)[1] for p in _left(config.ring)
            ]
        finally:
            for name in ipc.segments(config):
                ringbuf.unlink(name)


class TestStopUnlink:
    def test_stop_unlink_leaves_nothing(self, daemon_env):
        """A detached daemon on a host with every segment (a decisions
        one too): ``stop --unlink`` leaves no segment or lock file."""
        config = load_config(
            {
                "ring": daemon_env["LIVEMON_RING"],
                "db": daemon_env["LIVEMON_DB"],
            }
        )
        try:
            started = run_cli(daemon_env, "start")
            assert started.returncode == 0, started.stderr
            _make_every_segment(config)
            stopped = run_cli(daemon_env, "stop", "--unlink")
            assert stopped.returncode == 0, stopped.stderr
            assert _left(config.ring) == []
        finally:
            run_cli(daemon_env, "stop")
            for name in ipc.segments(config):
                ringbuf.unlink(name)
