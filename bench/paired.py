"""
The paced request of one source tree, for a before/after pair: run it for
each tree at the same time (pacing leaves the CPU idle, so both see the
same machine), each interleaving one ``struct.pack_into`` as its floor.

``python bench/paired.py TREE ROUNDS sleep|evict`` imports livemon from
TREE (a worktree) and prints the medians and the ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid


def main(tree: str, rounds: int, evict: bool) -> None:
    """Time ``rounds`` paced requests and ``pack_into`` calls, interleaved."""
    sys.path.insert(0, tree)
    os.chdir(tree)
    from bench.test_monitor import one_request
    from bench.test_paced import (
        FIELDS,
        RECORD_STRUCT,
        pace,
        pace_and_evict,
        unlink,
    )
    from livemon import Monitor, context
    from livemon.config import load_config

    step = pace_and_evict if evict else pace
    name = f"lmpair-{uuid.uuid4().hex[:8]}"
    config = load_config(
        {"ring": name, "lanes": 1, "capacity_records": 1 << 16}
    )
    buffer = bytearray(RECORD_STRUCT.size)
    floor, request = [], []
    try:
        with Monitor(config=config) as monitor:
            for _ in range(50):
                one_request(monitor)
            for _ in range(rounds):
                step()
                start = time.perf_counter_ns()
                RECORD_STRUCT.pack_into(buffer, 0, *FIELDS)
                floor.append(time.perf_counter_ns() - start)
                step()
                start = time.perf_counter_ns()
                one_request(monitor)
                request.append(time.perf_counter_ns() - start)
    finally:
        unlink(config)
    low, high = statistics.median(floor), statistics.median(request)
    print(
        f"{os.path.basename(tree):16} "
        f"{'compiled' if context.COMPILED else 'pure Python'} "
        f"{'evict' if evict else 'sleep'} "
        f"pack_into {low / 1e3:6.2f} us  request {high / 1e3:6.2f} us  "
        f"{high / low:4.1f}x"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "evict")
