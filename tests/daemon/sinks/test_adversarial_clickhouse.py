"""
A misbehaving ClickHouse, for real (marker clickhouse): a connection
reset mid-insert or mid-answer by a proxy, a table of another shape, a
read-only server, times far off, a list text nested past the stack.
Rows must arrive exactly once (ReplacingMergeTree, FINAL) or the error
must be permanent and say what to fix.
"""

from __future__ import annotations

import contextlib

import pytest

from daemon.forward import DestinationError
from tests.daemon.sinks.adversaries import CuttingProxy


@pytest.mark.clickhouse
class TestClickHouse:
    @pytest.mark.parametrize(
        ("cut_up", "cut_down"),
        # Cuts in the handshake, the DDL, the data block; in the server's
        # hello, its DDL answers, the insert's header (this batch's
        # insert is answered by byte 740).
        [
            (40, 10**9),
            (3000, 10**9),
            (20_000, 10**9),
            (10**9, 30),
            (10**9, 300),
            (10**9, 738),
        ],
    )
    def test_dropped_mid_insert_then_exactly_once(
        self, store, clickhouse, cut_up: int, cut_down: int
    ) -> None:
        from daemon.forward import read_rows
        from daemon.sinks.clickhouse import ClickHouseDestination

        rows = read_rows(store.db, "events", 0, 1000)
        proxy = CuttingProxy(clickhouse.tcp_port, cut_up, cut_down)
        url = f"clickhouse://127.0.0.1:{proxy.server.port}/cut"
        cut = ClickHouseDestination(
            url, "h", connect_timeout_s=2, send_receive_timeout_s=2
        )
        try:
            with contextlib.suppress(DestinationError):  # nothing else
                cut.ship("events", rows)
            cut.close()
        finally:
            proxy.server.close()
        whole = ClickHouseDestination(clickhouse.url("cut"), "h")
        whole.ship("events", rows)
        whole.close()
        assert clickhouse.query(
            "SELECT count(), uniqExact(epoch, lane, seq) FROM cut.events FINAL"
        ) == [(250, 250)]

    def test_a_table_of_another_shape_is_permanent(self, store, clickhouse):
        from daemon.forward import read_rows
        from daemon.sinks.clickhouse import ClickHouseDestination

        clickhouse.query("CREATE DATABASE shape")
        clickhouse.query(
            "CREATE TABLE shape.events (id UInt64, host String) "
            "ENGINE = MergeTree ORDER BY id"
        )
        sink = ClickHouseDestination(clickhouse.url("shape"), "h")
        with pytest.raises(DestinationError) as caught:
            sink.ship("events", read_rows(store.db, "events", 0, 10))
        sink.close()
        assert caught.value.permanent, caught.value
        assert "table" in str(caught.value)

    def test_times_far_off_ship(self, store, clickhouse):
        # A host whose clock was far off (or a damaged time): a batch
        # spanning 1938 to 2200 ships, in inserts the server takes.
        from daemon.forward import read_rows
        from daemon.sinks.clickhouse import ClickHouseDestination

        store.db.execute(
            "UPDATE events SET timestamp_ns = CASE id % 3 WHEN 0 THEN 0 "
            "WHEN 1 THEN -1000000000000000000 ELSE 7258118400000000000 END"
        )
        sink = ClickHouseDestination(clickhouse.url("clock"), "h")
        sink.ship("events", read_rows(store.db, "events", 0, 1000))
        sink.close()
        assert clickhouse.query("SELECT count() FROM clock.events FINAL") == [
            (250,)
        ]

    def test_a_read_only_server_is_permanent(self, store, tmp_path):
        from daemon.forward import read_rows
        from daemon.sinks.clickhouse import ClickHouseDestination
        from tests.daemon.sinks.clickhouse_server import ClickHouseServer

        server = ClickHouseServer(tmp_path / "read-only")
        users = server.dir / "users.xml"
        users.write_text(
            users.read_text().replace(
                "<default></default>",
                "<default><readonly>1</readonly></default>",
            )
        )
        server.start()
        try:
            sink = ClickHouseDestination(server.url(), "h")
            with pytest.raises(DestinationError) as caught:
                sink.ship("events", read_rows(store.db, "events", 0, 10))
            sink.close()
        finally:
            server.stop()
        assert caught.value.permanent, caught.value
        assert "code 164" in str(caught.value)

    def test_a_list_text_nested_past_the_stack_ships(self, store, clickhouse):
        # A list column's text the store did not write (a migrated or
        # damaged database): parsed as one item, not a RecursionError
        # that would fail this batch on every retry.
        from daemon.forward import read_rows
        from daemon.sinks.clickhouse import ClickHouseDestination

        rows = read_rows(store.db, "events", 0, 1000)
        rows.columns["actual_agents"][0] = "[" * 4000
        sink = ClickHouseDestination(clickhouse.url("nested"), "h")
        sink.ship("events", rows)
        sink.close()
        assert clickhouse.query(
            "SELECT count(), max(length(actual_agents[1])) "
            "FROM nested.events FINAL"
        ) == [(250, 4000)]
