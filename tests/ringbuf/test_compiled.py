"""
The compiled put (``ringbuf/_fastput.c``) against the Python put it
stands in front of: the same records, drops, errors and thread safety.

The rest of tests/ringbuf runs through whichever put is installed; CI
runs it once more with ``LIVEMON_PURE_PYTHON=1`` for the Python put alone.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringbuf
from ringbuf import _compiled, _layout, writer
from tests.compiler import HAS_COMPILER
from tests.ringbuf.records import TEST_DTYPE, intact, make_records

ROOT = Path(__file__).resolve().parents[2]
PURE = bool(os.environ.get(_compiled.PURE_PYTHON_ENV))
#: .ci/run runs tests/ringbuf once more with LIVEMON_PURE_PYTHON set.
needs_build = pytest.mark.skipif(
    _compiled._fastput is None and (PURE or not HAS_COMPILER),
    reason="the compiled put is switched off, or no compiler built it",
)


def test_built_wherever_a_compiler_is():
    """An install with a compiler builds the compiled put and uses it;
    switched off, it is not even loaded."""
    if PURE:
        assert _compiled._fastput is None and not writer.COMPILED
    elif HAS_COMPILER:
        assert _compiled._fastput is not None, "pip install -e . builds it"
        assert writer.COMPILED
    else:
        assert not writer.COMPILED


def test_pure_python_switch_keeps_the_python_put():
    """``LIVEMON_PURE_PYTHON`` leaves ``RingWriter.put`` in Python."""
    code = (
        "import ringbuf.writer as w, livemon.context as c;"
        "print(w.COMPILED, c.COMPILED, type(w.RingWriter.put).__name__)"
    )
    env = {"LIVEMON_PURE_PYTHON": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["False", "False", "function"]


@needs_build
class TestSameAsPython:
    def test_every_record_arrives_in_order(self, make_ring):
        """A lane written through both paths (the C put hands every 8th
        put to Python, which times its stale check) holds every record
        bit for bit, seqs contiguous, across the lane's wrap."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        got = []
        for start in range(0, 640, 32):
            records = make_records(3, start, 32)
            assert all(put.put(r.tobytes()) for r in records)
            batch = ring.pending(0)
            assert batch.first_seq == start and batch.end_seq == start + 32
            got.append(batch.records.copy())
            ring.advance(0, batch.end_seq)
        got = np.concatenate(got)
        assert intact(got)
        assert np.array_equal(got["index"], np.arange(640))

    def test_full_lane_is_counted_by_the_python_put(self, make_ring):
        """The C put declines a full lane; the drop is counted once."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=16)
        put = ring.writer()
        results = [put.put(r.tobytes()) for r in make_records(0, 0, 21)]
        assert results == [True] * 16 + [False] * 5
        state = ring.lane_state(0)
        assert (state.head, state.dropped) == (16, 5)

    def test_retired_ring_takes_nothing(self, make_ring):
        """After retire, no put stores, whichever path it takes."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        for record in make_records(0, 0, 3):
            assert put.put(record.tobytes())
        ring.retire()
        assert not any(put.put(r.tobytes()) for r in make_records(0, 3, 9))
        assert ring.lane_state(0).head == 3

    def test_errors_are_the_python_puts(self, make_ring):
        """Wrong sizes and closed writers raise as the Python put does;
        an np.void record (not bytes) is stored by the Python put."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        for _ in range(3):  # past the clock check: the C put's turn
            assert put.put(make_records(0, 0, 1).tobytes())
        with pytest.raises(ringbuf.RecordDtypeError):
            put.put(b"short")
        assert put.put(make_records(0, 3, 1)[0])
        put.close()
        with pytest.raises(ringbuf.RingClosed):
            put.put(make_records(0, 4, 1).tobytes())
        assert ring.lane_state(0).head == 4

    def test_closed_ring_raises(self, make_ring):
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        for _ in range(3):
            assert put.put(make_records(0, 0, 1).tobytes())
        ring.close()
        with pytest.raises(ringbuf.RingClosed):
            put.put(make_records(0, 3, 1).tobytes())

    def test_waits_for_a_thread_inside_the_python_put(self, make_ring):
        """While another thread holds the writer's lock (it is inside the
        Python put), the C put does not write: it waits its turn."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        for _ in range(3):
            assert put.put(make_records(0, 0, 1).tobytes())
        done = threading.Event()

        def write() -> None:
            put.put(make_records(0, 3, 1).tobytes())
            done.set()

        with put._thread_lock:
            thread = threading.Thread(target=write)
            thread.start()
            assert not done.wait(0.3)
            assert ring.lane_state(0).head == 3
        thread.join(10)
        assert done.is_set() and ring.lane_state(0).head == 4

    def test_threads_sharing_a_writer_lose_nothing(self, make_ring):
        """Four threads, one writer: every record once, none torn."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=1 << 15)
        put = ring.writer()
        per_thread = 5000

        def write(producer: int) -> None:
            for record in make_records(producer, 0, per_thread):
                assert put.put(record.tobytes())

        threads = [threading.Thread(target=write, args=(p,)) for p in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        records = ring.pending(0).records
        assert len(records) == 4 * per_thread and intact(records)
        for producer in range(4):
            mine = records[records["producer"] == producer]["index"]
            assert np.array_equal(mine, np.arange(per_thread))

    def test_record_by_keyword_as_the_python_put(self, make_ring):
        """``put(record=...)`` is the Python put's signature: the compiled
        put takes it too (handing it to the Python put), not TypeError."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        put = ring.writer()
        for record in make_records(0, 0, 3):  # past the clock check
            assert put.put(record.tobytes())
        assert put.put(record=make_records(0, 3, 1).tobytes())
        assert ring.lane_state(0).head == 4
        with pytest.raises(TypeError):
            put.put(make_records(0, 4, 1).tobytes(), extra=1)

    def test_a_head_past_int64(self, make_ring):
        """Seqs are u64: a lane whose cursors a damaged write left just
        below 2**63 (``_claim`` accepts any tail <= head <= tail + cap)
        goes on past it through both puts, as the Python put does, where
        an int64 head + 1 would overflow in C."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        words = ring._lanes.words()
        base = ring._lanes.lane_word(0)
        for word in (_layout.L_HEAD, _layout.L_TAIL):
            words[base + word] = 2**63 - 8
        put = ring.writer()
        results = [put.put(r.tobytes()) for r in make_records(0, 0, 16)]
        assert results == [True] * 16
        assert ring.lane_state(0).head == 2**63 + 8

    def test_out_of_memory_publishes_nothing(self, make_ring):
        """A put that raises MemoryError stored nothing, and the next put
        is delivered: the C put must not publish the slot and then fail
        to record its own head (its next put would rewrite a published
        slot and leave the head where it was).  Every allocation of the
        put is made to fail in turn (``_testcapi.set_nomemory``)."""
        testcapi = pytest.importorskip("_testcapi")
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=1024)
        put = ring.writer()
        records = iter(make_records(0, 0, 1000))
        for record in itertools.islice(records, 300):  # heads past 256
            assert put.put(record.tobytes())
        for start in range(6):
            while ring.lane_state(0).head % writer._CLOCK_EVERY == 0:
                assert put.put(next(records).tobytes())  # C put's turn
            head, data = ring.lane_state(0).head, next(records).tobytes()
            testcapi.set_nomemory(start, start + 1)
            try:
                put.put(data)
                raised = False
            except MemoryError:
                raised = True
            finally:
                testcapi.remove_mem_hooks()
            if raised:
                assert ring.lane_state(0).head == head, "stored, and raised"
            ring.advance(0, ring.pending(0).end_seq)
            record = next(records)
            assert put.put(record.tobytes())
            assert ring.pending(0).records.tobytes() == record.tobytes()

    def test_stale_build_is_not_installed(self, monkeypatch):
        """A build for another layout leaves the Python put in place."""

        class Writer:
            def put(self, record: bytes) -> bool:
                return False

        python_put = Writer.put
        monkeypatch.setattr(_compiled._fastput, "RETIRED_WORD", 99)
        assert not _compiled.install_put(Writer, 9, 8)
        assert Writer.put is python_put

    def test_bad_calls_are_type_errors(self, make_ring):
        """The compiled put (made here, installed or not) checks its call."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        writer = ring.writer()
        put = _compiled._fastput.method_for(ringbuf.RingWriter)
        with pytest.raises(TypeError):
            put(writer)  # no record
        with pytest.raises(TypeError):
            put(object(), b"")  # not a RingWriter
        with pytest.raises(TypeError):
            _compiled._fastput.method_for(42)

    def test_not_installed_with_the_gil_off(self, monkeypatch):
        """A free-threaded build run with PYTHON_GIL=0 keeps the GIL off
        even for a module that does not declare itself safe without it:
        the compiled put, lock-free because of the GIL, stays out."""

        class Writer:
            def put(self, record: bytes) -> bool:
                return False

        python_put = Writer.put
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, False)
        assert not _compiled.install_put(Writer, 9, 8)
        assert Writer.put is python_put


def test_a_writer_found_stale_stores_nothing(make_ring, monkeypatch):
    """Once ``stale`` said True (name unlinked), no put stores, whichever
    path it takes and whatever the head ("once stale, always stale")."""
    monkeypatch.setattr(writer, "STALE_CHECK_S", 0.0)
    ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
    put = ring.writer()
    for record in make_records(0, 0, 3):
        assert put.put(record.tobytes())
    ring.unlink()
    assert put.stale
    assert not any(put.put(r.tobytes()) for r in make_records(0, 3, 9))
    assert ring.lane_state(0).head == 3


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 20)),
        st.sampled_from(
            [
                ("void",),
                ("short",),
                ("keyword",),
                ("drain",),
                ("retire",),
                ("unlink",),
                ("stale",),
                ("close",),
            ]
        ),
        st.tuples(st.just("many"), st.integers(0, 20)),
    ),
    max_size=25,
)


def _apply(ring, writer_, put, op, records) -> object:
    """Run one operation; return its result or the type of its error."""
    try:
        if op[0] == "put":
            return [put(r.tobytes()) for r in records(op[1])]
        if op[0] == "void":
            return put(records(1)[0])
        if op[0] == "short":
            return put(b"short")
        if op[0] == "keyword":
            return put(record=records(1)[0].tobytes())
        if op[0] == "many":
            return writer_.put_many(records(op[1]))
        if op[0] == "drain":
            return ring.advance(0, ring.lane_state(0).head)
        if op[0] == "retire":
            return ring.retire()
        if op[0] == "unlink":
            return ring.unlink()
        if op[0] == "stale":
            return writer_.stale
        assert op[0] == "close"
        return writer_.close()
    except ringbuf.RingError as exc:
        return type(exc)


@needs_build
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_any_sequence_as_the_python_put(monkeypatch, ops):
    """Any sequence of puts (valid, np.void, wrong size, by keyword),
    batches, drains, retire, unlink, stale checks and close: the compiled
    put returns, raises and stores exactly what the Python put does, a
    ring for each (every clock turn checks the name: STALE_CHECK_S 0)."""
    monkeypatch.setattr(writer, "STALE_CHECK_S", 0.0)
    names = [f"lmtest-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    rings = [ringbuf.Ring.create(n, TEST_DTYPE, 1, 16) for n in names]
    try:
        writers = [ring.writer() for ring in rings]
        python_put = functools.partial(
            writer.RingWriter._put_python, writers[1]
        )
        puts = [writers[0].put, python_put]
        counts = [0, 0]

        def records_for(side: int):
            def records(n: int):
                counts[side] += n
                return make_records(0, counts[side] - n, n)

            return records

        for op in ops:
            outcomes = [
                _apply(rings[s], writers[s], puts[s], op, records_for(s))
                for s in (0, 1)
            ]
            assert outcomes[0] == outcomes[1], op
            states = [ring.lane_state(0) for ring in rings]
            assert states[0][:3] == states[1][:3], op
        pending = [ring.pending(0).records.tobytes() for ring in rings]
        assert pending[0] == pending[1]
    finally:
        for ring, name in zip(rings, names, strict=True):
            ring.close()
            ringbuf.unlink(name)
