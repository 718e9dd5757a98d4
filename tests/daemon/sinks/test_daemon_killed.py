"""
The daemon killed (SIGKILL) while it ships to a real ClickHouse server,
then started again: the batch whose mark was not stored is shipped
again, and ``FINAL`` still counts every event exactly once.
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import unlink_rings
from tests.daemon.conftest import coordinators, recorded
from tests.daemon.sinks.test_clickhouse import final_counts, wait_for

pytestmark = pytest.mark.clickhouse
REQUESTS = 20_000


def raw_count(server) -> int:
    """Rows in ClickHouse before deduplication (0 while none)."""
    try:
        return server.query("SELECT count() FROM livemon.events")[0][0]
    except Exception:  # the database is not created yet
        return 0


def test_killed_mid_shipment_counts_once(daemon_env, start_daemon, clickhouse):
    """Killed after some batches landed and before its marks caught up;
    the restarted daemon ships the rest and repeats what was unmarked."""
    env = dict(
        daemon_env, LIVEMON_HOST="k", LIVEMON_CLICKHOUSE_URL=clickhouse.url()
    )
    try:
        run = start_daemon(env)
        writers = coordinators(env, 2, REQUESTS)
        wait_for(lambda: raw_count(clickhouse) > 0)
        run.stop(sig=signal.SIGKILL)  # no goodbye: marks as last saved
        total = recorded(writers)
        run = start_daemon(env)
        wait_for(lambda: run.count() == total, 120)
        wait_for(lambda: final_counts(clickhouse) == {"k": (total,) * 2}, 120)
        assert raw_count(clickhouse) >= total
        assert run.stop() == 0
    finally:
        unlink_rings(env["LIVEMON_RING"])
