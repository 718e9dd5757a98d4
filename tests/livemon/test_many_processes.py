"""
Real worker counts on default settings: gunicorn or uvicorn with dozens of
workers each get a lane, and a process refused one is counted in the ring
where status and ``top`` show it.
"""

from __future__ import annotations

import multiprocessing

from livemon import Monitor, ipc
from livemon.config import load_config
from tests.livemon.helpers import events_in

WORKERS = 40
REQUESTS = 50


def work(ring_name: str, barrier, results) -> None:
    """One worker: all workers hold their Monitor at the same time."""
    with Monitor(ring_name) as monitor:
        barrier.wait(60)
        for i in range(REQUESTS):
            with monitor.request(f"query {i}") as ctx:
                ctx.log_execution(actual_agents=["coder"], success=True)
        barrier.wait(60)  # nobody gives its lane back before all wrote
        results.put(monitor.counters.recorded)


class TestManyWorkers:
    def test_forty_workers_on_defaults_all_record(self, ring_name):
        """40 processes at once, no lane setting: every request stored."""
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(WORKERS)
        results = context.Queue()
        workers = [
            context.Process(target=work, args=(ring_name, barrier, results))
            for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        recorded = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        assert recorded == [REQUESTS] * WORKERS
        assert len(events_in(ring_name)) == WORKERS * REQUESTS

    def test_refused_claims_are_counted_in_the_ring(self, ring_name):
        """One lane, two processes: the second is refused, and the ring
        says so to anyone who reads it."""
        config = load_config({"ring": ring_name, "lanes": 1})
        with Monitor(config=config) as first:
            with first.request("q"):
                pass
            context = multiprocessing.get_context("spawn")
            worker = context.Process(target=_one_request, args=(ring_name,))
            worker.start()
            worker.join(60)
            assert worker.exitcode == 0
            with ipc.attach_ring(ipc.events_ring(config)) as ring:
                assert ring.refused_claims == 1


def _one_request(ring_name: str) -> None:
    config = load_config({"ring": ring_name, "lanes": 1})
    with Monitor(config=config) as monitor:
        with monitor.request("q"):
            pass
        assert monitor.counters.lanes_exhausted == 1
