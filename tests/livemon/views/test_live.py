"""
Live views from the rings: the feedback loop's standing decisions, ring
figures and names, as ``livemon stats`` shows them without a database.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from livemon import Monitor, load_config
from livemon.cli import cli
from livemon.feedback import FeedbackLoop, Policy
from livemon.views import live


def route(monitor, count, *, agent, category, success, quality):
    """Record ``count`` requests through the public API."""
    for i in range(count):
        with monitor.request(f"query {i}") as ctx:
            ctx.log_intent(category=category)
            ctx.log_execution(
                actual_agents=[agent],
                execution_time_ms=120.0 + i % 7,
                success=i % 100 < success * 100,
            )
            ctx.log_quality(score=quality)
            ctx.log_acceptance(accepted=True)


@pytest.fixture
def decided(ring_name, tmp_path):
    """A ring where the loop has demoted ``flaky`` and raised a quality
    alert on ``docs``, and the loop is gone (its lane released)."""
    with Monitor(ring_name) as monitor:
        loop = FeedbackLoop(monitor, Policy(window_per_lane=4096))
        route(
            monitor,
            1000,
            agent="steady",
            category="docs",
            success=1.0,
            quality=0.9,
        )
        route(
            monitor,
            150,
            agent="flaky",
            category="docs",
            success=0.4,
            quality=0.5,
        )
        actions = loop.update()
        loop.close()
    assert {a.action.name for a in actions} >= {
        "AGENT_CONFIDENCE",
        "QUALITY_ALERT",
    }
    return load_config({"ring": ring_name, "db": str(tmp_path / "none.db")})


class TestSnapshot:
    def test_standing_decisions_and_counters(self, decided):
        """The snapshot sees the window, the loop's newest actions and
        every lane's counters."""
        snap = live.snapshot(decided)
        assert snap.stats.records == 1150
        flaky = {v: k for k, v in snap.names.items()}["flaky"]
        docs = {v: k for k, v in snap.names.items()}["docs"]
        assert snap.feedback.multipliers == {flaky: pytest.approx(0.9)}
        assert "quality" in snap.feedback.alerts[docs]
        assert sum(s.head for s in snap.lanes) == 1150
        assert not any(s.owned for s in snap.lanes)  # the monitor closed
        assert 0 < snap.overhead_ns[0] <= snap.overhead_ns[1]
        assert snap.daemon is None

    def test_no_ring_is_a_clear_error(self, tmp_path):
        """Before any coordinator ran, stats says so and exits 1."""
        result = CliRunner().invoke(
            cli, ["stats", "--ring", "livemon-never-created"]
        )
        assert result.exit_code == 1
        assert "no ring named 'livemon-never-created'" in result.output


class TestStatsCommand:
    def test_json_names_come_from_the_labels_ring(self, decided):
        """Without a database, names come from the labels ring."""
        result = CliRunner().invoke(
            cli,
            ["stats", "--ring", decided.ring, "--db", decided.db, "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        agents = {a["agent"]: a for a in body["agents"]}
        assert agents["flaky"]["confidence_x"] == pytest.approx(0.9)
        assert agents["steady"]["confidence_x"] == 1.0
        assert agents["flaky"]["success_rate"] == pytest.approx(0.4)
        assert [a["category"] for a in body["alerts"]] == ["docs"]

    def test_table(self, decided):
        """The aligned table shows the demotion and the alert."""
        result = CliRunner().invoke(
            cli, ["stats", "--ring", decided.ring, "--db", decided.db]
        )
        lines = result.output.splitlines()
        flaky = next(line for line in lines if line.startswith("flaky"))
        assert "40.0%" in flaky and "0.900" in flaky
        assert any(
            line.startswith("docs ") and "quality" in line for line in lines
        )
