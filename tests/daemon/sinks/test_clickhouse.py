"""
The ClickHouse destination: URLs and errors (no server needed), then
against a real clickhouse-server on loopback (marker ``clickhouse``):
tables created for the server's version, batches shipped twice counted
once, a server that is down, paused or killed costing nothing.
"""

from __future__ import annotations

import pytest
from clickhouse_driver import errors

from daemon.forward import Backoff, DestinationError, read_rows
from daemon.forwarding import Forwarding
from daemon.sinks import configured
from daemon.sinks.clickhouse import (
    ClickHouseDestination,
    _as_destination_error,
    parse_url,
)
from daemon.sinks.clickhouse_ddl import TABLES, is_modern
from livemon.config import load_config
from tests.daemon.sinks.conftest import add_agent_runs, event_batch


class TestUrl:
    def test_parts(self):
        """Host, port, credentials, TLS and database come from the URL."""
        assert parse_url("clickhouses://u%40x:p@db.example:9441/lm") == {
            "host": "db.example",
            "port": 9441,
            "user": "u@x",
            "password": "p",
            "secure": True,
            "database": "lm",
        }
        plain = parse_url("clickhouse://127.0.0.1")
        assert (plain["port"], plain["database"]) == (9000, "livemon")
        assert parse_url("clickhouses://h/x")["port"] == 9440

    @pytest.mark.parametrize(
        "url",
        [
            "http://h/x",
            "clickhouse:///x",
            "clickhouse://h/a-b",
            "clickhouse://h:x/",
        ],
    )
    def test_bad_urls_say_the_form(self, url):
        """Anything else is refused with the accepted form."""
        with pytest.raises(ValueError, match="clickhouse://"):
            parse_url(url)

    def test_configured_from_the_config(self, tmp_path):
        """clickhouse_url and host build the destination; none without."""
        config = load_config(
            {
                "db": str(tmp_path / "u.db"),
                "clickhouse_url": "clickhouse://127.0.0.1:1/x",
            }
        )
        [destination] = configured(config, "web-1")
        assert (destination.name, destination.host) == ("clickhouse", "web-1")
        assert destination.sources == ("events", "agent_runs")
        assert configured(load_config({"db": config.db}), "h") == []


class TestErrors:
    def test_credentials_are_permanent(self):
        """A wrong password is not fixed by retrying soon."""
        exc = errors.ServerException("Wrong password", code=193)
        assert _as_destination_error(exc).permanent

    def test_too_many_parts_asks_to_wait(self):
        """The server's 'slow down' becomes retry_after."""
        exc = errors.ServerException("Too many parts", code=252)
        error = _as_destination_error(exc)
        assert error.retry_after == 10.0 and not error.permanent

    def test_an_unreachable_server_is_retryable(self, store):
        """Nothing listens: a retryable DestinationError, no traceback."""
        dest = ClickHouseDestination(
            "clickhouse://127.0.0.1:9/x", "h", connect_timeout_s=1
        )
        with pytest.raises(DestinationError) as caught:
            dest.ship("events", read_rows(store.db, "events", 0, 10))
        assert not caught.value.permanent
        dest.close()

    def test_ddl_by_version(self):
        """20.1 and later get DateTime64 and TTL; older the plain DDL."""
        assert is_modern((26, 9, 2)) and not is_modern((18, 16, 1))
        modern = TABLES["events"].ddl("lm", modern=True)
        old = TABLES["events"].ddl("lm", modern=False)
        assert "TTL" in modern and "DateTime64" in modern
        assert "LowCardinality" not in old and "TTL" not in old
        for ddl in (modern, old):
            assert "ReplacingMergeTree" in ddl
            assert "ORDER BY (host, epoch, lane, seq)" in ddl


def final_counts(server, database="livemon", table="events"):
    """host -> (rows counted once, distinct identities)."""
    return {
        host: (rows, distinct)
        for host, rows, distinct in server.query(
            f"SELECT host, count(), uniqExact(epoch, lane, seq) "
            f"FROM {database}.{table} FINAL GROUP BY host"
        )
    }


@pytest.mark.clickhouse
class TestAgainstTheServer:
    def test_ships_events_with_texts_and_unknowns(self, store, clickhouse):
        """Rows arrive with texts, lists as arrays, NULL for unknown."""
        dest = ClickHouseDestination(clickhouse.url(), "web-1")
        dest.ship("events", read_rows(store.db, "events", 0, 1000))
        dest.close()
        assert dest.modern is False  # 18.16: the compatible DDL
        assert final_counts(clickhouse) == {"web-1": (250, 250)}
        [row] = clickhouse.query(
            "SELECT query_category, actual_agents, execution_time_ms, "
            "token_count, success, toYear(timestamp) FROM livemon.events "
            "WHERE seq = 3"
        )
        assert row[:5] == ("coding", ["coder"], None, None, 1)
        assert row[5] >= 2026

    def test_a_batch_shipped_twice_counts_once(self, store, clickhouse):
        """At least once plus the ReplacingMergeTree key: exactly once."""
        dest = ClickHouseDestination(clickhouse.url("twice"), "web-1")
        rows = read_rows(store.db, "events", 0, 1000)
        dest.ship("events", rows)
        dest.ship("events", rows)
        raw = clickhouse.query("SELECT count() FROM twice.events")[0][0]
        assert raw == 500
        assert final_counts(clickhouse, "twice") == {"web-1": (250, 250)}
        # The second copy is the same: unknowns stay NULL, not 0.
        nulls = clickhouse.query(
            "SELECT countIf(isNull(execution_time_ms)), "
            "countIf(isNull(token_count)) FROM twice.events FINAL"
        )
        assert nulls == [(250, 250)]
        assert set(rows.columns["token_count"]) == {None}  # not written into
        dest.close()

    def test_ships_agent_runs(self, store, clickhouse):
        """agent_runs (the contract's table) lands with its texts."""
        add_agent_runs(store.db, 30)
        dest = ClickHouseDestination(clickhouse.url(), "web-2")
        dest.ship("agent_runs", read_rows(store.db, "agent_runs", 0, 100))
        dest.close()
        rows = clickhouse.query(
            "SELECT agent, outcome, input_tokens, output_tokens, host "
            "FROM livemon.agent_runs FINAL"
        )
        assert len(rows) == 30
        assert set(rows) == {("coder", "merged", None, 300, "web-2")}

    def test_down_then_up_catches_up(self, store, clickhouse):
        """Started while the server is down: it retries, then ships all."""
        clickhouse.stop()
        group = Forwarding(
            store.path,
            [
                ClickHouseDestination(
                    clickhouse.url(), "h", connect_timeout_s=1
                )
            ],
            backoff=Backoff(base_s=0.05, cap_s=0.2),
            idle_s=0.05,
        )
        group.start()
        try:
            wait_for(lambda: group.figures()[0]["failures"] >= 2)
            assert group.figures()[0]["lag_rows"] == 250
            clickhouse.start()
            store.write(1, [], [event_batch(50, lane=1)])
            wait_for(lambda: group.figures()[0]["shipped_rows"] == 300)
        finally:
            assert group.stop(10.0)
        assert final_counts(clickhouse) == {"h": (300, 300)}


def wait_for(predicate, timeout_s=60.0):
    """Poll until ``predicate()``; fail on timeout."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.clickhouse
def test_a_batch_over_many_months_ships(store, clickhouse):
    """One batch whose times span more months than ClickHouse takes in
    one insert by default (100 partitions: a migrated history, damaged
    times) ships, rather than being refused and retried forever."""
    add_agent_runs(store.db, 240)
    month_ns = 31 * 86_400 * 10**9
    store.db.execute(
        "UPDATE agent_runs SET timestamp_ns = timestamp_ns - id * ?",
        (month_ns,),
    )
    dest = ClickHouseDestination(clickhouse.url("months"), "h")
    dest.ship("agent_runs", read_rows(store.db, "agent_runs", 0, 1000))
    dest.close()
    assert clickhouse.query(
        "SELECT count(), uniqExact(toYYYYMM(timestamp)) "
        "FROM months.agent_runs FINAL"
    ) == [(240, 240)]
