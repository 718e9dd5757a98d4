"""
What a Monitor's full lanes refused, counted in the lane headers (spilled,
or lost per reason) so the daemon, ``top`` and health see it per lane:
real rings, real spill files, a real full tmpfs.
"""

from __future__ import annotations

import json
import os
import pathlib

import ringbuf
from livemon import Monitor, ipc
from livemon.config import Config, load_config
from livemon.record import RECORD_DTYPE
from livemon.spill.drops import lane_drops
from livemon.views import top


def tiny(tmp_path: pathlib.Path, ring_name: str, **values: object) -> Config:
    """One 16-record lane, so nearly every request is refused."""
    return load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "state" / "livemon.db"),
            "lanes": 1,
            "capacity_records": 16,
            "spill_min_free_bytes": 0,
            **values,
        }
    )


def run(config: Config, requests: int) -> dict[str, int]:
    """Record ``requests`` with no daemon; return the lane's figures and
    the Monitor's counters, the ring still open."""
    with Monitor(config=config) as monitor:
        for i in range(requests):
            with monitor.request(f"q {i}") as ctx:
                ctx.log_execution(actual_agents=["coder"], success=True)
        counters = monitor.counters
    with ringbuf.Ring.attach(config.ring, RECORD_DTYPE) as ring:
        drops = lane_drops([ring.lane_state(0)])
    assert drops["refused"] == requests - counters.recorded
    return {
        **drops,
        "counted_spilled": counters.spilled,
        **{
            name: getattr(counters, name)
            for name in ("dropped", "dropped_disk_full", "dropped_io_error")
        },
    }


class TestLaneCounts:
    def test_spilled_records_are_counted_in_the_lane(
        self, tmp_path, ring_name
    ):
        """Every refused record spilled: the lane says so, none lost."""
        got = run(tiny(tmp_path, ring_name), 500)
        assert got["spilled"] == got["counted_spilled"] == 500 - 16
        assert got["lost"] == 0
        assert got["lanes"][0]["lane"] == 0

    def test_spilling_off_is_lost_to_the_full_ring(self, tmp_path, ring_name):
        got = run(tiny(tmp_path, ring_name, spill=False), 100)
        assert (got["spilled"], got["ring_full"]) == (0, 84)
        assert got["lost"] == got["dropped"] == 84

    def test_a_full_disk_is_counted_per_reason(
        self, tmp_path, ring_name, tmpfs
    ):
        """The spill's tmpfs fills: the lane's disk_full equals the
        Monitor's, and spilled plus lost is every refusal."""
        config = tiny(
            tmp_path,
            ring_name,
            spill_dir=str(tmpfs / "spill"),
            spill_segment_bytes=256 * 1024,
        )
        got = run(config, 20_000)
        assert got["disk_full"] == got["dropped_disk_full"] > 0
        assert got["spilled"] == got["counted_spilled"] > 0
        assert got["spilled"] + got["lost"] == got["refused"]
        assert got["ring_full"] == 0

    def test_an_unwritable_spill_dir_is_an_io_error(self, tmp_path, ring_name):
        """A spill root that is a file: nothing reaches the disk, yet the
        lane header tells the operator why records were lost."""
        (tmp_path / "blocker").write_text("not a directory")
        config = tiny(tmp_path, ring_name, spill_dir=str(tmp_path / "blocker"))
        got = run(config, 100)
        assert got["io_error"] == got["dropped_io_error"] == 84
        assert got["spilled"] == 0

    def test_top_shows_the_lost_records_per_lane(self, tmp_path, ring_name):
        """``livemon top`` reads the lanes live: spilled and lost."""
        config = tiny(tmp_path, ring_name, spill=False)
        with Monitor(config=config) as monitor:
            for _ in range(20):
                monitor.request("q").end()
            lines = top.frame(config, lambda snap: _namer)
        ring_line = next(line for line in lines if line.startswith("ring"))
        assert "dropped 4 (ring full 4)" in ring_line
        assert any("LOST 4 (ring full 4)" in line for line in lines)


def _namer(label: int) -> str:
    return f"#{label}"


def test_top_shows_the_spill_backlog_per_lane(tmp_path, ring_name):
    """The daemon's published backlog (written here as it writes it),
    summed per lane over epochs, busiest lane first."""
    config = tiny(tmp_path, ring_name)
    lane = {"tree": "events", "size_bytes": 2**20, "segments": 1}
    status = {
        "pid": os.getpid(),
        "drained": 0,
        "drain_per_s": 0,
        "lag_records": 0,
        "dropped": 0,
        "spill": {
            "records": 700,
            "lanes": [
                {
                    **lane,
                    "epoch": 1,
                    "lane": 0,
                    "records": 100,
                    "oldest_age_s": 5.0,
                },
                {
                    **lane,
                    "epoch": 2,
                    "lane": 0,
                    "records": 200,
                    "oldest_age_s": 9.0,
                },
                {
                    **lane,
                    "epoch": 2,
                    "lane": 3,
                    "records": 400,
                    "oldest_age_s": 1.0,
                },
                {
                    **lane,
                    "tree": "labels",
                    "epoch": 2,
                    "lane": 1,
                    "records": 50,
                    "oldest_age_s": 1.0,
                },
            ],
        },
    }
    pathlib.Path(ipc.status_file(config)).parent.mkdir(parents=True)
    pathlib.Path(ipc.status_file(config)).write_text(json.dumps(status))
    with Monitor(config=config) as monitor:
        monitor.request("q").end()
        lines = top.frame(config, lambda snap: _namer)
    shown = [line.split() for line in lines if line.startswith("  lane")]
    assert [words[1] for words in shown] == ["3", "0"]  # busiest first
    assert shown[1][3] == "300" and shown[1][-2] == "9"  # both epochs
