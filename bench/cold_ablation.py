"""
Where a cold monitored request's time goes: the request paced 2 ms apart
with an 8 MiB cache sweep, whole (as built, and in pure Python) and with
its packing or its write taken out, interleaved with one
``struct.pack_into`` of the same fields.

Run as ``python -m bench.cold_ablation [rounds]``: not a test (it swaps
methods of a live context to take the pieces out).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable

import ringbuf
from bench.test_monitor import one_request
from bench.test_paced import FIELDS, RECORD_STRUCT, pace_and_evict
from livemon import Monitor, context, ipc
from livemon.config import load_config
from ringbuf.writer import RingWriter

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
    name = f"lmcold-{uuid.uuid4().hex[:8]}"
    config = load_config(
        {"ring": name, "lanes": 1, "capacity_records": 1 << 16}
    )
    cls = context.RequestContext
    scalars, lists, fast_pack = cls._scalars, cls._lists, context._fast_pack
    put, python_put = vars(RingWriter)["put"], RingWriter._put_python
    buffer = bytearray(RECORD_STRUCT.size)
    times: dict[str, list[int]] = {v: [] for v in VARIANTS}
    try:
        with Monitor(config=config) as monitor:
            write = monitor._sink.write
            probe = monitor.request("q")
            packed = scalars(probe, 0) + lists(probe)

            def take_out(variant: str) -> None:
                no_pack = variant in ("no packing", "neither")
                python = variant == "whole, pure Python"
                context._fast_pack = None if no_pack or python else fast_pack
                cls._scalars = _packed(packed) if no_pack else scalars
                cls._lists = _empty if no_pack else lists
                RingWriter.put = python_put if python else put
                no_write = variant in ("no write", "neither")
                monitor._sink.write = _stored if no_write else write

            for _ in range(rounds):
                for variant in VARIANTS:
                    take_out(variant)
                    pace_and_evict()
                    start = time.perf_counter_ns()
                    if variant == "pack_into":
                        RECORD_STRUCT.pack_into(buffer, 0, *FIELDS)
                    else:
                        one_request(monitor)
                    times[variant].append(time.perf_counter_ns() - start)
            monitor._sink.write = write
    finally:
        cls._scalars, cls._lists = scalars, lists
        context._fast_pack, RingWriter.put = fast_pack, put
        for segment in ipc.segments(config):
            ringbuf.unlink(segment)
    floor = statistics.median(times["pack_into"])
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        print(f"{variant:20} {median / 1e3:7.2f} us  {median / floor:4.1f}x")


def _packed(packed: bytes) -> Callable[..., bytes]:
    """A ``_scalars`` that packs nothing: the record is ready."""
    return lambda self, start: packed


def _empty(self: object) -> bytes:
    return b""


def _stored(packed: bytes) -> bool:
    return True


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
