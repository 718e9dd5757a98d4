"""
``livemon report --clickhouse``: the report's tables across hosts from
what the sink shipped, with a per-host breakdown, against a real server
(marker ``clickhouse``); URL and driver errors without one.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from click.testing import CliRunner

from daemon.forward import read_rows
from daemon.sinks.clickhouse import ClickHouseDestination
from livemon.cli import cli
from livemon.db.reading import Labels, TimeRange
from livemon.exceptions import DatabaseUnavailable
from livemon.record import label_id
from livemon.views import clickhouse as view
from livemon.views.report import build_report
from tests.daemon.sinks.conftest import add_agent_runs, event_batch


def ship(store, server, host: str, table: str = "events") -> None:
    """Ship every row of ``store``'s ``table`` as ``host``."""
    dest = ClickHouseDestination(server.url(), host)
    dest.ship(table, read_rows(store.db, table, 0, 10**6))
    dest.close()


def agent_runs_row(server) -> dict:
    """The ClickHouse report's one agent_runs row, over the last day."""
    client, database = view.connect(server.url())
    report = view.build_clickhouse_report(
        client, database, TimeRange.parse("1d", "now")
    )
    [row] = report.table("agent_runs").records()
    client.disconnect()
    return row


class TestWithoutServer:
    def test_a_bad_url_says_the_form(self):
        """Not a ClickHouse URL: a DatabaseUnavailable naming the form."""
        with pytest.raises(DatabaseUnavailable, match="clickhouse://"):
            view.connect("http://127.0.0.1/x")

    def test_without_the_driver_it_says_what_to_install(self, monkeypatch):
        """clickhouse-driver missing (simulated: the import fails)."""
        monkeypatch.setitem(sys.modules, "clickhouse_driver", None)
        with pytest.raises(
            DatabaseUnavailable, match=r"livemon\[clickhouse\]"
        ):
            view.connect("clickhouse://127.0.0.1/x")

    def test_an_unreachable_server_is_one_line(self):
        """The CLI prints one line and exits 1, no traceback."""
        result = CliRunner().invoke(
            cli, ["report", "--clickhouse", "clickhouse://127.0.0.1:9/x"]
        )
        assert result.exit_code == 1
        assert "cannot reach ClickHouse" in result.output
        assert "Traceback" not in result.output


@pytest.mark.clickhouse
class TestAcrossHosts:
    def test_per_host_and_the_same_tables(self, store, clickhouse):
        """Two hosts: the per-host table splits them, the per-agent
        table adds them up, as the SQLite report of each counts."""
        store.write(1, [], [event_batch(50, lane=1)])
        ship(store, clickhouse, "web-1")
        ship(store, clickhouse, "web-2")
        ship(store, clickhouse, "web-2")  # again: still counted once
        client, database = view.connect(clickhouse.url())
        span = TimeRange.parse("1d", "now")
        report = view.build_clickhouse_report(client, database, span)
        hosts = report.table("hosts")
        assert [r[:2] for r in hosts.rows] == [("web-1", 300), ("web-2", 300)]
        local = build_report(store.db, Labels(store.db), span)
        agents = report.table("agents")
        assert agents.column("agent") == local.table("agents").column("agent")
        assert agents.column("requests") == [
            2 * n for n in local.table("agents").column("requests")
        ]
        assert agents.column("hosts") == [2]
        by_host = report.table("agent_hosts")
        assert by_host.column("host") == ["web-1", "web-2"]
        assert report.table("trend").column("requests") == [600]
        assert report.table("agent_runs").rows == []  # none shipped
        client.disconnect()

    def test_agent_runs_across_hosts(self, store, clickhouse):
        """Each agent's runs, outcomes and hosts, from agent_runs."""
        add_agent_runs(store.db, 20)
        for host in ("web-1", "web-2"):
            ship(store, clickhouse, host, "agent_runs")
        row = agent_runs_row(clickhouse)
        assert row["agent"] == "coder" and row["runs"] == 40
        assert (row["hosts"], row["merged"], row["selected"]) == (2, 40, 0)
        assert row["success_rate"] == 1.0 and row["tokens"] == 40 * 300

    def test_cancelled_runs_are_censored_as_in_the_local_report(
        self, store, clickhouse
    ):
        """A cancelled run counts as cancelled, not as a failure or a
        latency sample (the README's rule, kept by the local report)."""
        add_agent_runs(store.db, 4)  # merged, successful, 12.5 ms
        store.db.execute(
            "INSERT INTO agent_runs (epoch, lane, seq, timestamp_ns, "
            "request_id, pid, agent, outcome, execution_time_ms, success) "
            "VALUES (2, 0, 0, ?, 99, 42, ?, 3, 9000.0, 0)",
            (time.time_ns(), label_id("coder")),
        )
        ship(store, clickhouse, "web-1", "agent_runs")
        row = agent_runs_row(clickhouse)
        assert (row["runs"], row["cancelled"]) == (5, 1)
        assert row["success_rate"] == 1.0
        assert row["mean_ms"] == 12.5 and row["p95_ms"] == 12.5

    def test_cli_json_and_agent_filter(self, store, clickhouse):
        """The flag gives JSON; an agent nobody used is a usage error."""
        ship(store, clickhouse, "web-1")
        url = clickhouse.url()
        result = CliRunner().invoke(
            cli,
            ["report", "--clickhouse", url, "--format", "json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["hosts"][0]["host"] == "web-1"
        assert body["hosts"][0]["requests"] == 250
        result = CliRunner().invoke(
            cli, ["report", "--clickhouse", url, "--agent", "nobody"]
        )
        assert result.exit_code == 2 and "nobody" in result.output
        missing = CliRunner().invoke(
            cli, ["report", "--clickhouse", clickhouse.url("absent")]
        )
        assert missing.exit_code == 1 and "absent" in missing.output
