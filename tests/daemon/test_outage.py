"""
The daemon away while coordinators record (their lanes fill and spill),
and the ring replaced under a running daemon: everything sent is stored
exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import ringbuf
from livemon.record import RECORD_DTYPE
from tests.daemon.conftest import coordinators, recorded

NO_DUPLICATES = "SELECT count(*) - count(DISTINCT request_id) FROM events"


class TestDaemonAway:
    def test_spilled_records_are_replayed_exactly_once(
        self, start_daemon, daemon_env
    ):
        """Two coordinators on 64-record lanes with no daemon: most of
        what they send spills; a daemon started later stores all of it,
        once, and removes the spill files."""
        env = dict(
            daemon_env,
            LIVEMON_CAPACITY_RECORDS="64",
            LIVEMON_SPILL_MIN_FREE_BYTES="0",
        )
        sent = recorded(coordinators(env, 2, 3000))
        spill_root = os.path.join(os.path.dirname(env["LIVEMON_DB"]), "spill")
        assert glob.glob(f"{spill_root}/**/*.lms", recursive=True)
        daemon = start_daemon(env=env)
        daemon.wait_until(lambda: daemon.count() == sent, timeout_s=120)
        assert daemon.count(NO_DUPLICATES) == 0
        daemon.wait_until(
            lambda: not glob.glob(f"{spill_root}/**/*.lms", recursive=True)
        )
        # The coordinators are gone: their lane and epoch directories too.
        daemon.wait_until(lambda: not glob.glob(f"{spill_root}/*/*"))
        assert daemon.stop() == 0
        assert daemon.count() == sent

    def test_daemon_killed_mid_replay(self, start_daemon, daemon_env):
        """SIGKILL while it replays a large spill: the next daemon goes on
        from the committed rows, adds no duplicate, loses nothing."""
        env = dict(
            daemon_env,
            LIVEMON_CAPACITY_RECORDS="64",
            LIVEMON_SPILL_MIN_FREE_BYTES="0",
        )
        sent = recorded(coordinators(env, 3, 30_000))
        first = start_daemon(env=env)
        first.wait_until(lambda: first.count() > 0, timeout_s=120)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        assert first.count() < sent  # killed with records left to replay
        second = start_daemon(env=env)
        second.wait_until(lambda: second.count() == sent, timeout_s=300)
        assert second.count(NO_DUPLICATES) == 0
        assert second.stop() == 0
        assert second.count() == sent


PACED = """
import dataclasses, json, os, sys, time
from livemon import Monitor
flag, more = sys.argv[1], int(sys.argv[2])
with Monitor() as monitor:
    left = more
    while left:
        with monitor.request("q") as ctx:
            ctx.log_execution(actual_agents=["coder"], success=True)
        time.sleep(0.0005)
        if os.path.exists(flag):
            left -= 1
print(json.dumps(dataclasses.asdict(monitor.counters)))
"""


def paced(env: dict[str, str], flag: str, more: int) -> subprocess.Popen:
    """A coordinator recording steadily until ``flag`` exists, then
    ``more`` requests; it prints its counters."""
    return subprocess.Popen(
        [sys.executable, "-c", PACED, flag, str(more)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


class TestRingReplaced:
    def test_unlinked_under_the_daemon_and_coordinators(
        self, start_daemon, daemon_env, tmp_path
    ):
        """A cleanup script removes the ring while the daemon drains two
        running coordinators: the daemon follows the new segment and
        stores every request once."""
        daemon = start_daemon()
        flag = str(tmp_path / "unlinked")
        load = [paced(daemon_env, flag, 2000) for _ in range(2)]
        daemon.wait_until(lambda: daemon.count() > 500)
        ring = daemon_env["LIVEMON_RING"]
        for suffix in ("", ".labels", ".feedback"):
            ringbuf.unlink(ring + suffix)
        open(flag, "w").close()
        sent = recorded(load)
        daemon.wait_until(lambda: daemon.count() == sent, timeout_s=120)
        assert daemon.count(NO_DUPLICATES) == 0
        time.sleep(1.5)  # a second look, after the next ring check
        assert daemon.count() == sent
        assert daemon.stop() == 0


class TestRegrow:
    def test_restart_with_more_lanes_moves_everyone(
        self, start_daemon, daemon_env, tmp_path
    ):
        """The ring was made with 2 lanes; a daemon restarted with 8 puts
        new rings under the names, the running coordinator follows at its
        next record, and every request is stored once."""
        small = dict(daemon_env, LIVEMON_LANES="2")
        first = start_daemon(env=small)
        flag = str(tmp_path / "regrown")
        load = [paced(small, flag, 1000)]
        first.wait_until(lambda: first.count() > 300)
        assert first.stop() == 0
        big = dict(daemon_env, LIVEMON_LANES="8")
        second = start_daemon(env=big)
        with ringbuf.Ring.attach(big["LIVEMON_RING"], RECORD_DTYPE) as ring:
            assert ring.lanes == 8
        open(flag, "w").close()
        sent = recorded(load)
        second.wait_until(lambda: second.count() == sent, timeout_s=120)
        assert second.count(NO_DUPLICATES) == 0
        assert second.stop() == 0


class TestDropsReported:
    def test_status_and_health_tell_spilled_from_lost_per_reason(
        self, start_daemon, daemon_env
    ):
        """Two coordinators one after the other on a 64-record lane with
        no daemon, the second with spilling off: the daemon's status and
        health rows tell what the full lane refused, spilled (first) and
        lost to the ring (second), as the coordinators counted it."""
        env = dict(
            daemon_env,
            LIVEMON_CAPACITY_RECORDS="64",
            LIVEMON_SPILL_MIN_FREE_BYTES="0",
        )
        (spilling,) = coordinators(env, 1, 2000)
        spilled = json.loads(spilling.communicate(timeout=300)[0])
        (dropping,) = coordinators(dict(env, LIVEMON_SPILL="false"), 1, 2000)
        dropped = json.loads(dropping.communicate(timeout=300)[0])
        assert spilled["spilled"] > 0 and dropped["dropped"] > 0
        daemon = start_daemon(env=env)

        def reported() -> bool:
            drops = daemon.status().get("drops") or {}
            return drops.get("spilled") == spilled["spilled"]

        daemon.wait_until(reported)
        status = daemon.status()
        assert status["drops"]["ring_full"] == dropped["dropped"]
        assert status["dropped"] == dropped["dropped"]
        assert status["drops"]["lost"] == dropped["dropped"]
        # The second took the lane the first gave back, and counted on.
        (lane,) = status["drops"]["lanes"]
        assert lane["refused"] == spilled["spilled"] + dropped["dropped"]
        assert (lane["spilled"], lane["ring_full"], lane["lost"]) == (
            spilled["spilled"],
            dropped["dropped"],
            dropped["dropped"],
        )
        daemon.wait_until(
            lambda: (
                daemon.count(
                    "SELECT count(*) FROM health WHERE spilled = "
                    f"{spilled['spilled']} AND dropped_ring_full = "
                    f"{dropped['dropped']} AND dropped = {dropped['dropped']}"
                )
                > 0
            )
        )
        lanes_json = daemon.count(
            "SELECT json_array_length(lanes_json, '$.drops') FROM health "
            "ORDER BY id DESC LIMIT 1"
        )
        assert lanes_json == 1
        text = subprocess.run(
            [sys.executable, "-m", "daemon", "status"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        assert f"lost {dropped['dropped']} (ring full" in text
        assert daemon.stop() == 0

    def test_agent_runs_drops_and_spill_directories(
        self, start_daemon, daemon_env
    ):
        """The agents ring's lanes count their spills as the events'
        do (one ProcessSpill rule for every ring): the daemon reports
        them, and prunes the agents spill tree once replayed."""
        from tests.daemon.test_agent_runs import run_workers, stored_runs

        env = dict(
            daemon_env,
            LIVEMON_CAPACITY_RECORDS="64",
            LIVEMON_SPILL_MIN_FREE_BYTES="0",
        )
        counters = run_workers(env, 2, 400)
        spilled = sum(c["agent_runs_spilled"] for c in counters)
        assert spilled > 0
        daemon = start_daemon(env=env)
        daemon.wait_until(
            lambda: (
                daemon.count("SELECT count(*) FROM agent_runs")
                == stored_runs(counters)
            )
        )
        drops = daemon.status()["agent_runs"]["drops"]
        assert (drops["spilled"], drops["lost"]) == (spilled, 0)
        spill_root = os.path.join(os.path.dirname(env["LIVEMON_DB"]), "spill")
        agents_tree = os.path.join(spill_root, env["LIVEMON_RING"] + ".agents")
        daemon.wait_until(lambda: not glob.glob(f"{agents_tree}/*"))
        assert daemon.stop() == 0
