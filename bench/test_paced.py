"""
The cold hot path: requests paced 2 ms apart, as a real coordinator sends
them, so caches are cold at each call; livemon against a single
``struct.pack_into`` of the same fields and ``multiprocessing.Queue.put``.

The subjects are interleaved, each round running every one once (in a
rotating order) after the same pacing step, so each runs among the others'
code, as a request runs among the coordinator's.  Timing each subject in
its own loop instead leaves the baseline nearly warm: a ``pack_into``
repeated alone keeps its code and branch history across an 8 MiB sweep
(0.7-3 us here, against 6-15 us interleaved, the cold figure the issue
measured), and its ratio swung 4.5-13x from run to run.

``monitor_request`` runs through whatever the install built (the compiled
packer and put where a compiler was found); ``monitor_request_python``
is the same request with the pure-Python path, in the same run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import struct
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import ringbuf
from bench.test_monitor import one_request
from livemon import Monitor, context, ipc
from livemon.config import load_config
from livemon.record import RECORD_DTYPE, struct_for

ROUNDS = 1500
WARMUP_ROUNDS = 20
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


class Subject:
    """One thing timed: ``call`` after ``prepare`` (untimed) each round."""

    def __init__(
        self,
        name: str,
        call: Callable[[], object],
        prepare: Callable[[], None] = lambda: None,
    ) -> None:
        self.name, self.call, self.prepare = name, call, prepare
        self.samples_ns: list[int] = []


def interleave(subjects: list[Subject], pacing: Callable[[], None]) -> None:
    """Time every subject once a round, rotating who goes first."""
    clock = time.perf_counter_ns
    for round_ in range(WARMUP_ROUNDS + ROUNDS):
        shift = round_ % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            subject.prepare()
            pacing()
            start = clock()
            subject.call()
            elapsed = clock() - start
            if round_ >= WARMUP_ROUNDS:
                subject.samples_ns.append(elapsed)


@pytest.fixture
def monitors(ring_name) -> Iterator[tuple[Monitor, Monitor]]:
    """Two monitors on rings of their own: the second writes through
    the Python put, set on its writer alone (reassigning
    ``RingWriter.put`` each round would bump the class's version and
    throw away the interpreter's specializations for both)."""
    with contextlib.ExitStack() as stack:
        pair = []
        for name in (ring_name, f"{ring_name}-py"):
            config = load_config(
                {"ring": name, "lanes": 1, "capacity_records": 4 * ROUNDS}
            )
            stack.callback(unlink, config)
            pair.append(stack.enter_context(Monitor(config=config)))
        writer = pair[1]._events
        writer.put = writer._put_python  # type: ignore[method-assign]
        yield pair[0], pair[1]
        for monitor in pair:
            counters = monitor.counters
            assert counters.invalid == counters.dropped == 0
            assert counters.recorded == WARMUP_ROUNDS + ROUNDS


@pytest.mark.parametrize(
    "pacing", [pace, pace_and_evict], ids=["sleep", "evict"]
)
def test_paced(pacing, monitors, record_samples):
    """pack_into, Queue.put and a whole monitored request (five log calls
    and the write), compiled and pure Python, interleaved."""
    buffer = bytearray(RECORD_STRUCT.size)
    pack_into: Callable[..., None] = RECORD_STRUCT.pack_into
    compiled, python = monitors
    fast_pack = context._fast_pack

    def packer(pack: Callable[..., object] | None) -> Callable[[], None]:
        """Sets the packer contexts use (a module global: no version)."""
        return lambda: setattr(context, "_fast_pack", pack)

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    reader = ctx.Process(target=_drain, args=(queue,))
    reader.start()
    subjects = [
        Subject("pack_into", lambda: pack_into(buffer, 0, *FIELDS)),
        Subject("queue_put", lambda: queue.put(FIELDS)),
        Subject(
            "monitor_request",
            lambda: one_request(compiled),
            packer(fast_pack),
        ),
        Subject(
            "monitor_request_python",
            lambda: one_request(python),
            packer(None),
        ),
    ]
    try:
        interleave(subjects, pacing)
    finally:
        context._fast_pack = fast_pack
        queue.put(None)
        reader.join(timeout=30)
    assert reader.exitcode == 0
    assert struct.unpack(RECORD_STRUCT.format, buffer) == FIELDS
    floor = f"paced[{pacing.__name__}] pack_into"
    for subject in subjects:
        name = f"paced[{pacing.__name__}] {subject.name}"
        baseline = None if subject.name == "pack_into" else floor
        assert len(subject.samples_ns) == ROUNDS
        record_samples(name, subject.samples_ns, baseline=baseline)
    # The compiled subject took the compiled path (when built).
    assert (fast_pack is not None) is context.COMPILED


def unlink(config) -> None:
    """Unlink every segment of ``config``'s rings."""
    for segment in ipc.segments(config):
        ringbuf.unlink(segment)


def _drain(queue) -> None:
    while queue.get() is not None:
        pass
