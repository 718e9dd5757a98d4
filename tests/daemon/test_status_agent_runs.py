"""
Agent runs in ``livemon-daemon status`` (text and STATUS= line) and in
the health table (migration 0010): drained, lag, spill, drops.
"""

from __future__ import annotations

from daemon.status import agent_health_columns, status_line, status_text
from tests.daemon.test_agent_runs import query, run_workers, stored_runs
from tests.daemon.test_cli import run_cli

FIGURES = {
    "drained": 10,
    "drain_per_s": 1.0,
    "lag_records": 0,
    "dropped": 0,
    "lanes_in_use": 1,
    "lanes": 4,
    "last_error": None,
    "incident": None,
    "file_errors": [],
    "quarantined_lanes": [],
    "refused_claims": 0,
    "spill": {},
}
REPORT = {
    **FIGURES,
    "running": True,
    "state": "running",
    "pid": 1,
    "uptime_s": 5,
    "rss_bytes": 2**20,
    "cpu_percent": 0,
    "figures_age_s": 0.5,
    "ring": "r",
    "db": "d",
}


def runs(**more):
    """The ``agent_runs`` block as the daemon publishes it."""
    block = {
        "drained": 1500,
        "lag_records": 12,
        "ring": True,
        "ring_error": None,
        "spill_replayed": 40,
        "spill": {"records": 7, "size_bytes": 2**20},
        "spill_error": None,
        "drops": {"refused": 0, "spilled": 0, "lost": 0, "lanes": []},
    }
    block.update(more)
    return block


LOSSY = {
    "refused": 9,
    "spilled": 4,
    "lost": 5,
    "ring_full": 5,
    "spill_cap": 0,
    "disk_full": 0,
    "io_error": 0,
    "lanes": [],
}


class TestStatusText:
    def test_drained_lag_and_spill(self):
        """One line: runs drained, lag, spill backlog, replayed."""
        text = status_text({**REPORT, "agent_runs": runs()})
        assert (
            "  agents    drained 1500, lag 12, spill 7 records (1.0 MiB), "
            "replayed 40" in text
        )

    def test_drops_and_trouble(self):
        """Lost runs are told with their reason, in the text and in the
        STATUS= line; an unreadable ring says why."""
        block = runs(drops=LOSSY, ring=False, ring_error="dtype differs")
        text = status_text({**REPORT, "agent_runs": block})
        assert "full lanes refused 9: spilled 4, lost 5" in text
        assert "lost 5 (ring full 5)" in text
        assert "AGENTS    ring not drained: dtype differs" in text
        line = status_line({**FIGURES, "agent_runs": block})
        assert "5 agent runs LOST" in line
        assert "agents ring: dtype differs" in line
        assert "LOST" not in status_line({**FIGURES, "agent_runs": runs()})

    def test_a_daemon_without_agent_runs(self):
        """Figures of the release before agent runs: no agents line."""
        assert "agents" not in status_text(REPORT)

    def test_health_columns(self):
        """The health row's agent-run columns, from the figures."""
        assert agent_health_columns({"agent_runs": runs(drops=LOSSY)}) == {
            "agent_runs_drained": 1500,
            "agent_runs_lag_records": 12,
            "agent_runs_spill_records": 7,
            "agent_runs_lost": 5,
        }


class TestDaemon:
    def test_status_and_health_show_agent_runs(self, start_daemon, daemon_env):
        """A real daemon drains real coordinators' runs: ``status`` says
        how many, and the health rows record them."""
        run = start_daemon()
        expected = stored_runs(run_workers(daemon_env, 1, 100))
        run.wait_until(
            lambda: run.status()["agent_runs"]["drained"] == expected
        )
        text = run_cli(daemon_env, "status").stdout
        assert f"agents    drained {expected}, lag 0" in text, text
        db = daemon_env["LIVEMON_DB"]
        run.wait_until(
            lambda: (
                query(db, "SELECT max(agent_runs_drained) FROM health")[0][0]
                == expected
            )
        )
        (row,) = query(
            db,
            "SELECT agent_runs_lag_records, agent_runs_spill_records, "
            "agent_runs_lost FROM health ORDER BY id DESC LIMIT 1",
        )
        assert row == (0, 0, 0)
        assert run.stop() == 0
