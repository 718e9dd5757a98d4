"""
The compiled packer (``livemon/_fastpack.c``) against the Python path it
stands in front of: the same bytes whenever it packs, and it packs every
common request once its labels are known.

The rest of tests/livemon runs through whichever path is installed; CI
runs it once more with ``LIVEMON_PURE_PYTHON=1`` for the Python path.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livemon import _compiled, context
from livemon import record as rec
from tests.compiler import HAS_COMPILER
from tests.livemon.test_context import CALLS, run_request

PURE = bool(os.environ.get(_compiled.PURE_PYTHON_ENV))
#: .ci/run runs tests/livemon once more with the packer switched off
#: (LIVEMON_PURE_PYTHON): then it is not even loaded.  With a compiler
#: and not switched off, a missing build fails (the packer fixtures).
pytestmark = pytest.mark.skipif(
    _compiled._fastpack is None and (PURE or not HAS_COMPILER),
    reason="the compiled packer is switched off, or no compiler built it",
)
OVERHEAD = slice(rec.SCALARS_STRUCT.size - 8, rec.SCALARS_STRUCT.size)
SETTINGS = settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

names = st.sampled_from(["code", "coder", "reviewer", "parallel", "x" * 40])
name_lists = st.one_of(
    st.none(),
    st.lists(names, max_size=8),
    st.lists(names, max_size=3).map(tuple),
)
flags = st.one_of(st.none(), st.booleans())


def unit(high: float) -> st.SearchStrategy[float | None]:
    return st.one_of(st.none(), st.floats(0.0, high))


#: Requests whose every value is the common case: exact types, in range.
COMMON_CALLS = st.fixed_dictionaries(
    {
        "query": st.text(st.characters(max_codepoint=127), max_size=60),
        "category": st.one_of(st.none(), names),
        "intent": st.fixed_dictionaries(
            {
                "category": st.one_of(st.none(), names),
                "domains": name_lists,
                "complexity": st.one_of(st.none(), st.integers(0, 2**15 - 1)),
            }
        ),
        "routing": st.fixed_dictionaries(
            {
                "suggested_agents": name_lists,
                "strategy": st.one_of(st.none(), names),
                "confidence": unit(1.0),
            }
        ),
        "execution": st.fixed_dictionaries(
            {
                "actual_agents": name_lists,
                "execution_time_ms": unit(1e12),
                "success": flags,
                "error": st.one_of(st.none(), names),
                "token_count": st.one_of(st.none(), st.integers(0, 2**62)),
                "context_size_kb": unit(1e9),
            }
        ),
        "quality": st.fixed_dictionaries(
            {
                "score": unit(1.0),
                "task_completed": flags,
                "code_valid": flags,
                "tests_passed": flags,
            }
        ),
        "acceptance": st.fixed_dictionaries(
            {
                "accepted": flags,
                "override_reason": st.one_of(st.none(), names),
            }
        ),
        "end_error": st.one_of(st.none(), names),
    }
)


@pytest.fixture
def packed(monkeypatch):
    """What the compiled packer returned at each ``end``, and its start."""
    compiled = _compiled.compiled_pack()
    assert compiled is not None, "pip install -e . builds livemon._fastpack"
    calls: list[tuple[bytes | None, int]] = []

    def spy(ctx, start):
        result = compiled(ctx, start)
        calls.append((result, start))
        return result

    monkeypatch.setattr(context, "_fast_pack", spy)
    return calls


def python_path(monitor, packed, call) -> tuple[bytes | None, bytes]:
    """End ``call``'s request; return the compiled bytes (or None) and
    the Python path's bytes for the same context and start."""
    contexts = []
    request = monitor.request

    def keep(*args, **kwargs):
        contexts.append(request(*args, **kwargs))
        return contexts[-1]

    monitor.request = keep
    try:
        run_request(monitor, call)
    finally:
        del monitor.request
    compiled, start = packed[-1]
    ctx = contexts[-1]
    return compiled, ctx._scalars(start) + ctx._lists()


def same_but_overhead(a: bytes, b: bytes) -> bool:
    """Equal bytes, except the overhead_ns each path timed itself."""
    return len(a) == len(b) and (
        a[: OVERHEAD.start] + a[OVERHEAD.stop :]
        == b[: OVERHEAD.start] + b[OVERHEAD.stop :]
    )


class TestSameBytes:
    @SETTINGS
    @given(call=CALLS)
    def test_whatever_it_packs_equals_the_python_path(
        self, monitor, packed, call
    ):
        """Any values, hostile ones included: it never raises, and when
        it packs, the bytes are the Python path's."""
        compiled, python = python_path(monitor, packed, call)
        if compiled is not None:
            assert same_but_overhead(compiled, python)

    @SETTINGS
    @given(call=COMMON_CALLS)
    def test_it_packs_every_common_request(self, monitor, packed, call):
        """The common case is packed in C once its labels are known."""
        python_path(monitor, packed, call)  # the first meets the labels
        compiled, python = python_path(monitor, packed, call)
        assert compiled is not None
        assert same_but_overhead(compiled, python)
        assert monitor.counters.invalid == 0

    def test_overhead_is_timed(self, monitor, packed):
        """overhead_ns covers the context's start and its end."""
        call = {
            "query": "fix the test",
            "category": "code",
            "intent": {"category": "code", "domains": ["python"]},
            "routing": {"suggested_agents": ["coder"], "confidence": 0.8},
            "execution": {"actual_agents": ["coder"], "success": True},
            "quality": {"score": 0.9},
            "acceptance": {"accepted": True},
            "end_error": None,
        }
        python_path(monitor, packed, call)
        compiled, _ = python_path(monitor, packed, call)
        overhead = int.from_bytes(compiled[OVERHEAD], "little", signed=True)
        assert 0 < overhead < 10**9


class TestDeclines:
    def test_declines_without_side_effects(self, monitor):
        """An unknown label, a bad type: None, and nothing counted."""
        pack = _compiled.compiled_pack()
        ctx = monitor.request("q", category="never seen")
        before = dict(vars(monitor.counters))
        assert pack(ctx, time.perf_counter_ns()) is None
        ctx.log_intent(category=None, complexity=True)  # a bool count
        assert pack(ctx, time.perf_counter_ns()) is None
        assert vars(monitor.counters) == before
        assert ctx.end() is True

    def test_a_value_whose_hash_changes_the_context(self, monitor):
        """A list item's ``__hash__`` runs while the list is looked up;
        if it empties the context's dict (all but its sink), packing stays
        safe (it holds its own references) and the request is counted."""

        class Meddler(str):
            def __hash__(self) -> int:
                sink = ctx._sink
                vars(ctx).clear()
                ctx._sink = sink
                return 0

        ctx = monitor.request("q", category="code")
        ctx.log_routing(suggested_agents=[Meddler("coder")], confidence=0.5)
        ctx.end()
        assert monitor.counters.recorded + monitor.counters.failed == 1

    def test_stale_build_is_not_used(self, monkeypatch):
        """A build for another record layout stays unused."""
        monkeypatch.setattr(_compiled._fastpack, "SCALARS_FORMAT", "<q")
        assert _compiled.compiled_pack() is None

    def test_not_used_with_the_gil_off(self, monkeypatch):
        """Free-threaded with PYTHON_GIL=0: the packer reads dicts and
        borrows their values, safe only under the GIL, so it stays off."""
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, False)
        assert _compiled.compiled_pack() is None

    def test_bad_call_is_a_type_error(self):
        with pytest.raises(TypeError):
            _compiled._fastpack.pack([], 0)
        with pytest.raises(TypeError):
            _compiled._fastpack.pack(object(), 0)


class TestHostileValues:
    """Values whose own code runs while the packer works (review of the
    compiled path): it must never read memory that code freed, nor pack
    what the Python path refuses."""

    def test_a_cached_list_freed_by_an_items_finalizer(self, monitor):
        """An item equal to a cached name empties its list while hashed,
        so the key tuple holds its last reference; freeing that tuple runs
        the item's ``__del__``, which clears the list cache (freeing the
        cached bytes) and reuses their memory.  The packed ids must still
        be the cached list's, as the Python path packs them (or None)."""
        warm = monitor.request("q", category="code")
        warm.log_intent(domains=["code"])
        warm.end()
        ctx = monitor.request("q", category="code")
        lists = ctx._sink.label_lists
        wanted = bytes(bytearray(lists[("code",)]))  # a copy, not a ref
        reused: list[bytes] = []
        ran = []

        class Twin:
            def __hash__(self) -> int:
                ctx._domains.clear()  # the key tuple is now its owner
                return hash("code")

            def __eq__(self, other: object) -> bool:
                return other == "code"

            def __del__(self) -> None:
                ran.append(True)
                lists.clear()
                # Drain the free blocks of the bytes' size class, so the
                # freed cached bytes is reused (pymalloc hands it out).
                reused.extend(bytes([0xEE]) * 64 for _ in range(20_000))

        ctx.log_intent(domains=[Twin()])
        got = _compiled.compiled_pack()(ctx, time.perf_counter_ns())
        assert ran, "the finalizer ran inside pack"
        domains = slice(rec.SCALARS_STRUCT.size, rec.SCALARS_STRUCT.size + 64)
        assert got is None or got[domains] == wanted

    def test_an_overhead_past_int64_is_the_python_paths(self, monitor):
        """An overhead the int64 cannot hold once end() adds its own time:
        the Python path's struct refuses it (the request is counted
        failed); the packer must not wrap it around and store it."""
        monitor.request("q", category="code").end()  # "code" now known
        ctx = monitor.request("q", category="code")
        pack = _compiled.compiled_pack()
        assert pack(ctx, time.perf_counter_ns()) is not None
        ctx._overhead_ns = 2**63 - 1
        assert pack(ctx, time.perf_counter_ns() - 10**6) is None
        assert ctx.end() is False
        assert monitor.counters.failed == 1
