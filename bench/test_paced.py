"""
The cold hot path: requests paced 2 ms apart, as a real coordinator sends
them, so caches are cold at each call; livemon against a single
``struct.pack_into`` of the same fields and ``multiprocessing.Queue.put``,
paced the same way in the same run.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from bench.test_monitor import one_request
from livemon import Monitor
from livemon.config import load_config
from livemon.record import RECORD_DTYPE, struct_for

pytestmark = pytest.mark.benchmark(group="paced")

ROUNDS = 1500
PACE_S = 0.002
# The fields of one request record, scalars then the three id lists.
FIELDS = (
    1_700_000_000_000_000_000,
    4242,
    1234,
    0,
    -77,
    11,
    3,
    12,
    13,
    0.8,
    0,
    14,
    120.5,
    1,
    0,
    0.9,
    1,
    1,
    0,
    1234,
    12.5,
    5000,
    *(21, 22, 0, 0, 0, 0, 0, 0),
    *(31, 32, 0, 0, 0, 0, 0, 0),
    *(31, 0, 0, 0, 0, 0, 0, 0),
)
RECORD_STRUCT = struct_for(RECORD_DTYPE)


EVICT_BYTES = 8 << 20  # 4x this machine's L2 (2 MiB per core)
_EVICT = np.zeros(EVICT_BYTES, np.uint8)


def pace() -> None:
    """Leave the CPU for 2 ms, as a coordinator does between requests."""
    time.sleep(PACE_S)


def pace_and_evict() -> None:
    """Sleep, then sweep 8 MiB, as the coordinator's own work would.

    A sleep alone on an idle core leaves L1 and L2 nearly as they were;
    a coordinator's work between two requests (model calls, JSON,
    asyncio) evicts them.  The sweep does that, the same for everyone.
    """
    time.sleep(PACE_S)
    np.add(_EVICT, 1, out=_EVICT)


@pytest.fixture(params=[pace, pace_and_evict], ids=["sleep", "evict"])
def paced(request, benchmark):
    """Run one call per round, each after the pacing step."""

    def run(fn, *args):
        benchmark.pedantic(
            fn, args=args, setup=request.param, rounds=ROUNDS, warmup_rounds=20
        )

    run.baseline = f"test_paced_pack_into[{request.node.callspec.id}]"
    return run


def test_paced_pack_into(benchmark, record, paced):
    """One ``struct.pack_into`` of the record's fields (the floor)."""
    buffer = bytearray(RECORD_DTYPE.itemsize)
    paced(RECORD_STRUCT.pack_into, buffer, 0, *FIELDS)
    record(benchmark)
    assert RECORD_STRUCT.unpack_from(buffer) == FIELDS


def test_paced_queue_put(benchmark, record, paced):
    """``multiprocessing.Queue.put`` of the fields (a reader drains)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    reader = ctx.Process(target=_drain, args=(queue,))
    reader.start()
    try:
        paced(queue.put, FIELDS)
    finally:
        queue.put(None)
        reader.join(timeout=30)
    record(benchmark, baseline=paced.baseline)
    assert reader.exitcode == 0


def test_paced_monitor_request(benchmark, record, paced, ring_name):
    """One whole monitored request (five log calls and the write)."""
    config = load_config(
        {"ring": ring_name, "lanes": 1, "capacity_records": 2 * ROUNDS}
    )
    with Monitor(config=config) as monitor:
        paced(one_request, monitor)
        assert monitor.counters.recorded >= ROUNDS
        assert monitor.counters.invalid == monitor.counters.dropped == 0
    record(benchmark, baseline=paced.baseline)


def _drain(queue) -> None:
    while queue.get() is not None:
        pass
