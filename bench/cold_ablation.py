"""
Where a cold monitored request's time goes: the request paced 2 ms apart
with an 8 MiB cache sweep, whole (as built, and in pure Python) and with
its packing or its write taken out, interleaved with one
``struct.pack_into`` of the same fields.

Each variant has a monitor of its own, changed on its instances only:
reassigning class attributes between variants would bump the classes'
versions and throw away the interpreter's specializations for all.

Run as ``python -m bench.cold_ablation [rounds]``: not a test (it swaps
methods of live objects to take the pieces out).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import uuid

from bench.test_monitor import one_request
from bench.test_paced import FIELDS, RECORD_STRUCT, pace_and_evict, unlink
from livemon import Monitor, context
from livemon.config import load_config

VARIANTS = (
    "pack_into",
    "whole",
    "whole, pure Python",
    "no packing",
    "no write",
    "neither",
)


def main(rounds: int) -> None:
    """Print each variant's median and its ratio to ``pack_into``."""
    buffer = bytearray(RECORD_STRUCT.size)
    times: dict[str, list[int]] = {v: [] for v in VARIANTS}
    fast_pack = context._fast_pack
    with contextlib.ExitStack() as stack:
        monitors = {v: _monitor(stack, v) for v in VARIANTS[1:]}
        packers = {
            v: fast_pack if v in ("whole", "no write") else None
            for v in VARIANTS[1:]
        }
        try:
            for round_ in range(rounds):
                # Rotated: what ran just before trains the branch
                # predictors (the sweep leaves them be), and a variant
                # right after a similar one runs cheaper.
                shift = round_ % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    if variant != "pack_into":  # a module global: no version
                        context._fast_pack = packers[variant]
                    pace_and_evict()
                    start = time.perf_counter_ns()
                    if variant == "pack_into":
                        RECORD_STRUCT.pack_into(buffer, 0, *FIELDS)
                    else:
                        one_request(monitors[variant])
                    times[variant].append(time.perf_counter_ns() - start)
        finally:
            context._fast_pack = fast_pack
    floor = statistics.median(times["pack_into"])
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        print(f"{variant:20} {median / 1e3:7.2f} us  {median / floor:4.1f}x")


def _monitor(stack: contextlib.ExitStack, variant: str) -> Monitor:
    """A monitor on its own ring, with ``variant``'s pieces taken out."""
    config = load_config(
        {
            "ring": f"lmcold-{uuid.uuid4().hex[:8]}",
            "lanes": 1,
            "capacity_records": 1 << 16,
        }
    )
    stack.callback(unlink, config)
    monitor = stack.enter_context(Monitor(config=config))
    if variant == "whole, pure Python":
        writer = monitor._events
        writer.put = writer._put_python  # type: ignore[method-assign]
    if variant in ("no packing", "neither"):
        probe = monitor.request("q")
        packed = probe._scalars(0) + probe._lists()
        probe.end()
        prepacked = _prepacked(packed)
        monitor.request = lambda query, category=None: prepacked(  # type: ignore[method-assign]
            monitor._sink, query, category
        )
    if variant in ("no write", "neither"):
        monitor._sink.write = _stored
    return monitor


def _prepacked(packed: bytes) -> type[context.RequestContext]:
    """A context class whose record is ready: it packs nothing."""

    class Prepacked(context.RequestContext):
        def _scalars(self, start: int) -> bytes:
            return packed

        def _lists(self) -> bytes:
            return b""

    return Prepacked


def _stored(packed: bytes) -> bool:
    return True


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
