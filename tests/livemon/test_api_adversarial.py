"""
The coordinator's API against a careless or hostile caller: wrong types,
hostile objects, odd numbers and texts, late and repeated calls, threads,
fork inside a request.  Each case checks that nothing raises (default
mode), that every refusal or loss shows in ``monitor.counters``, that the
ring (or the SQLite file the drainer fills) holds exactly what was given,
and that the compiled packer and the Python path store the same.
"""

from __future__ import annotations

import decimal
import enum
import fractions
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

from livemon import InvalidField, Monitor, MonitoringUnavailable, _checks
from livemon import record as rec
from livemon._compiled import PURE_PYTHON_ENV
from livemon.config import load_config
from livemon.context import query_hash
from livemon.coordinator import AgentResult, Coordinator, Result
from tests.conftest import unlink_rings
from tests.livemon.helpers import events_in, labels_in
from tests.livemon.test_agents import runs_in
from tests.livemon.test_monitor_spill import drain_all, query

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


class Boom(Exception):
    """What the hostile objects below raise."""


class HashRaises(str):
    def __hash__(self) -> int:
        raise Boom("hash")


class SubStr(str):
    pass


class Agent(enum.StrEnum):
    """Names as a coordinator may well keep them: str subclasses."""

    CODER = "coder"
    REVIEWER = "reviewer"


class SubInt(int):
    pass


class SubFloat(float):
    pass


class IndexRaises(int):
    def __index__(self) -> int:
        raise Boom("index")

    def __int__(self) -> int:
        raise Boom("int")


class FloatRaises(float):
    def __float__(self) -> float:
        raise Boom("float")


class StrRaises(Exception):
    def __str__(self) -> str:
        raise Boom("str")


class ClassRaises:
    """isinstance() itself raises on this one."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        raise Boom("__class__")


def cases() -> dict[str, dict[str, Any]]:
    """Request specs: ``query``, ``category`` and each log_* call's
    keywords; built anew per run (a generator is used up)."""
    return {
        "plain": {},
        "conf_np64": {"routing": {"confidence": np.float64(0.5)}},
        "conf_np32": {"routing": {"confidence": np.float32(0.25)}},
        "conf_neg_zero": {"routing": {"confidence": -0.0}},
        "conf_nan": {"routing": {"confidence": math.nan}},
        "conf_inf": {"routing": {"confidence": math.inf}},
        "conf_decimal": {"routing": {"confidence": decimal.Decimal("0.5")}},
        "conf_fraction": {"routing": {"confidence": fractions.Fraction(1, 4)}},
        "conf_int": {"routing": {"confidence": 1}},
        "conf_bool": {"routing": {"confidence": True}},
        "conf_subfloat": {"routing": {"confidence": SubFloat(0.5)}},
        "conf_float_raises": {"routing": {"confidence": FloatRaises(0.5)}},
        "ms_huge_int": {"execution": {"execution_time_ms": 10**400}},
        "ms_np_int": {"execution": {"execution_time_ms": np.int64(5)}},
        "tokens_subint": {"execution": {"token_count": SubInt(5)}},
        "tokens_np": {"execution": {"token_count": np.int64(7)}},
        "tokens_np_huge": {"execution": {"token_count": np.uint64(2**63)}},
        "tokens_bool": {"execution": {"token_count": True}},
        "tokens_float": {"execution": {"token_count": 5.0}},
        "tokens_index_raises": {"execution": {"token_count": IndexRaises(3)}},
        "complexity_big": {"intent": {"complexity": 2**15}},
        "success_np": {"execution": {"success": np.bool_(True)}},
        "success_two": {"execution": {"success": 2}},
        "success_subint": {"execution": {"success": SubInt(1)}},
        "category_sub": {"category": SubStr("code")},
        "category_enum": {"category": Agent.CODER},
        "category_sub_empty": {"category": SubStr("")},
        "category_hash_raises": {"category": HashRaises("code")},
        "category_empty": {"category": ""},
        "category_too_long": {"category": "x" * 300},
        "category_non_ascii": {"category": "ñandú-日本"},
        "category_surrogate": {"category": "a\udcff"},
        "query_sub": {"query": SubStr("hello")},
        "query_none": {"query": None},
        "query_surrogate": {"query": "\ud800x"},
        "error_exception": {"execution": {"error": ValueError("v")}},
        "error_sub": {"execution": {"error": SubStr("boom")}},
        "error_str_raises": {"execution": {"error": StrRaises()}},
        "error_huge": {"execution": {"error": "é" * 5000}},
        "domains_tuple": {"intent": {"domains": ("a", "b")}},
        "domains_generator": {"intent": {"domains": iter(["a"])}},
        "domains_too_many": {
            "intent": {"domains": [str(i) for i in range(9)]}
        },
        "domains_non_str": {"intent": {"domains": ["a", 3]}},
        "domains_none_inside": {"intent": {"domains": ["a", None]}},
        "domains_hash_raises": {"intent": {"domains": ["a", HashRaises("b")]}},
        "domains_sub_cached": {"intent": {"domains": [SubStr("a")]}},
        "domains_sub_new": {"intent": {"domains": [SubStr("new"), "a"]}},
        "agents_enum": {
            "routing": {"suggested_agents": [Agent.CODER, Agent.REVIEWER]},
            "execution": {"actual_agents": [Agent.CODER]},
        },
        "unknown_keyword": {"intent": {"bogus": 1}},
    }


def run_case(monitor: Monitor, name: str, spec: dict[str, Any]) -> int:
    """One request as ``spec`` says; return its request id."""
    keywords = {"category": spec["category"]} if "category" in spec else {}
    with monitor.request(spec.get("query", name), **keywords) as ctx:
        for call in ("intent", "routing", "execution", "acceptance"):
            if call in spec:
                getattr(ctx, "log_" + call)(**spec[call])
        return ctx.request_id


_TEXT_FIELDS = ("query_category", "intent_category", "error")
_VOLATILE = ("timestamp_ns", "request_id", "pid", "overhead_ns")


def stored_cases(ring: str) -> dict[str, Any]:
    """Run every case on a fresh Monitor of ``ring``; return, per case,
    the counters it moved and its record as read back from the ring."""
    out: dict[str, Any] = {}
    with Monitor(ring) as monitor:
        with monitor.request("warm") as ctx:  # names and lists seen before
            ctx.log_intent(domains=["a"])
        before = dict(vars(monitor.counters))
        ids = {}
        for name, spec in cases().items():
            ids[name] = run_case(monitor, name, spec)
            now = dict(vars(monitor.counters))
            moved = {k: now[k] - before[k] for k in now if now[k] != before[k]}
            out[name] = {"counters": moved}
            before = now
        events = {int(r["request_id"]): r for r in events_in(ring)}
        texts = labels_in(ring)
    for name, request_id in ids.items():
        record = events.get(request_id)
        out[name]["record"] = (
            None if record is None else readable(record, texts)
        )
    return out


def readable(record: np.void, texts: dict[int, str]) -> dict[str, Any]:
    """A record's fields as JSON-able values, label ids as their texts."""
    fields: dict[str, Any] = {}
    for field in rec.RECORD_DTYPE.names or ():
        if field in _VOLATILE:
            continue
        value = record[field]
        if field in rec.LIST_FIELDS:
            fields[field] = [texts.get(int(i), int(i)) for i in value if i]
        elif field in _TEXT_FIELDS and int(value):
            fields[field] = texts.get(int(value), int(value))
        else:
            fields[field] = repr(value.item())  # NaN and -0.0 as such
    return fields


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    """The cases, run once in this process."""
    ring = f"lmtest-{uuid.uuid4().hex[:12]}"
    try:
        return stored_cases(ring)
    finally:
        unlink_rings(ring)


def stored_in_subprocess(pure: bool) -> dict[str, Any]:
    """The cases, run in a fresh interpreter, compiled or pure Python."""
    env = dict(os.environ)
    env.pop(PURE_PYTHON_ENV, None)
    if pure:
        env[PURE_PYTHON_ENV] = "1"
    ring = f"lmtest-{uuid.uuid4().hex[:12]}"
    code = (
        "import json, sys; from tests.livemon.test_api_adversarial import "
        f"stored_cases; print(json.dumps(stored_cases({ring!r})))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        unlink_rings(ring)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def base(stored: dict[str, Any], name: str) -> dict[str, Any]:
    """What case ``name`` stored that the plain request did not."""
    plain = stored["plain"]["record"]
    record = stored[name]["record"]
    assert record is not None, f"{name}: no record in the ring"
    return {
        k: v for k, v in record.items() if v != plain[k] and k != "query_hash"
    }


class TestValues:
    """Each odd value: stored as given, or stored unknown and counted."""

    @pytest.mark.parametrize(
        ("name", "fields"),
        [
            ("conf_np64", {"confidence": "0.5"}),
            ("conf_np32", {"confidence": "0.25"}),
            ("conf_neg_zero", {"confidence": "-0.0"}),
            ("conf_fraction", {"confidence": "0.25"}),
            ("conf_int", {"confidence": "1.0"}),
            ("conf_subfloat", {"confidence": "0.5"}),
            ("ms_np_int", {"execution_time_ms": "5.0"}),
            ("tokens_subint", {"token_count": "5"}),
            ("tokens_np", {"token_count": "7"}),
            ("success_np", {"success": "1"}),
            ("success_subint", {"success": "1"}),
            ("category_non_ascii", {"query_category": "ñandú-日本"}),
            ("domains_tuple", {"intent_domains": ["a", "b"]}),
            ("category_sub", {"query_category": "code"}),
            ("category_enum", {"query_category": "coder"}),
            ("category_hash_raises", {"query_category": "code"}),
            ("domains_hash_raises", {"intent_domains": ["a", "b"]}),
            ("error_sub", {"error": "boom"}),
            ("domains_sub_cached", {"intent_domains": ["a"]}),
            ("domains_sub_new", {"intent_domains": ["new", "a"]}),
            (
                "agents_enum",
                {
                    "suggested_agents": ["coder", "reviewer"],
                    "actual_agents": ["coder"],
                },
            ),
            ("error_exception", {"error": "ValueError: v"}),
        ],
    )
    def test_accepted_values_are_stored_as_given(self, stored, name, fields):
        assert stored[name]["counters"] == {"recorded": 1}
        assert base(stored, name) == fields

    @pytest.mark.parametrize(
        ("name", "fields"),
        [
            ("conf_nan", {}),
            ("conf_inf", {}),
            ("conf_decimal", {}),
            ("conf_bool", {}),
            ("conf_float_raises", {}),
            ("ms_huge_int", {}),
            ("tokens_np_huge", {}),
            ("tokens_bool", {}),
            ("tokens_float", {}),
            ("tokens_index_raises", {}),
            ("complexity_big", {}),
            ("success_two", {}),
            ("category_sub_empty", {}),
            ("category_empty", {}),
            ("category_too_long", {}),
            ("query_none", {}),
            ("domains_generator", {}),
            ("domains_too_many", {}),
            ("domains_non_str", {"intent_domains": ["a"]}),
            ("domains_none_inside", {"intent_domains": ["a"]}),
            ("unknown_keyword", {}),
            ("error_str_raises", {"error": "StrRaises: <str() raised>"}),
        ],
    )
    def test_refused_values_are_unknown_and_counted(
        self, stored, name, fields
    ):
        assert stored[name]["counters"] == {"recorded": 1, "invalid": 1}
        assert base(stored, name) == fields

    def test_a_lone_surrogate_is_stored_escaped_and_counted(self, stored):
        for name in ("category_surrogate", "query_surrogate"):
            moved = stored[name]["counters"]
            assert moved == {"recorded": 1, "texts_escaped": 1}
        fields = base(stored, "category_surrogate")
        assert fields == {"query_category": "a\\udcff"}

    def test_a_long_error_is_cut_visibly(self, stored):
        error = base(stored, "error_huge")["error"]
        assert error.startswith("é" * 100)
        assert error.endswith("[truncated, 10000 bytes in all]")
        assert len(error.encode()) <= rec.MAX_TEXT_BYTES

    def test_a_str_subclass_is_taken_by_its_value(self, stored):
        """A str subclass (a StrEnum member) is stored as its value, in a
        field and in a list, whether or not an equal list of str was seen
        before (the cache used to decide: refused unless cached)."""
        assert stored["query_sub"]["counters"] == {"recorded": 1}
        hello = stored["query_sub"]["record"]["query_hash"]
        assert hello == repr(query_hash("hello"))


def test_compiled_and_pure_python_store_the_same():
    """The whole table, in two fresh interpreters: the same counters and
    the same records (volatile fields aside)."""
    compiled, pure = stored_in_subprocess(False), stored_in_subprocess(True)
    assert compiled.keys() == pure.keys()
    for name in compiled:
        assert compiled[name] == pure[name], name


def test_odd_values_reach_sqlite_as_given(tmp_path, ring_name):
    """Through the real drainer into a real SQLite file."""
    config = load_config(
        {"ring": ring_name, "db": str(tmp_path / "livemon.db")}
    )
    with Monitor(config=config) as monitor:
        with monitor.request("q", category="ñandú-日本") as ctx:
            ctx.log_routing(confidence=np.float32(0.25), strategy="a\udcff")
            ctx.log_execution(
                execution_time_ms=-0.0,
                token_count=np.int64(2**62),
                error=ValueError("é" * 3000),
            )
        assert monitor.counters.recorded == 1
    assert drain_all(config) == (1, 0)
    (row,) = query(
        config,
        "SELECT confidence, execution_time_ms, token_count, c.text, s.text,"
        " e.text FROM events"
        " JOIN labels AS c ON c.label_id = query_category"
        " JOIN labels AS s ON s.label_id = routing_strategy"
        " JOIN labels AS e ON e.label_id = error",
    )
    assert row[:5] == (0.25, 0.0, 2**62, "ñandú-日本", "a\\udcff")
    assert row[5].startswith("ValueError: éé")
    assert row[5].endswith("bytes in all]")


class TestAgentRunsAccounted:
    """A request's agent runs are stored or counted, whatever happens to
    the request's own record."""

    def test_runs_of_an_unreadable_request_are_counted(self, monitor):
        """A value isinstance() cannot look at loses the request (counted
        failed); its runs were lost with no count at all."""
        with monitor.request("q") as ctx:
            ctx.log_routing(confidence=ClassRaises())
            ctx.log_agent("coder", execution_time_ms=1.0)
            ctx.log_agent("reviewer")
        c = monitor.counters
        assert (c.failed, c.agent_runs_failed) == (1, 2)
        assert c.agent_runs_recorded == 0

    def test_strict_write_error_still_writes_or_counts_runs(self, ring_name):
        with Monitor(ring_name, strict=True) as monitor:
            monitor.close()
            ctx = monitor.request("q")
            ctx.log_agent("coder")
            with pytest.raises(MonitoringUnavailable):
                ctx.end()
            c = monitor.counters
            assert (c.unavailable, c.agent_runs_unavailable) == (1, 1)

    def test_strict_with_block_error_counts_runs(self, ring_name):
        with Monitor(ring_name, strict=True) as monitor:
            monitor.close()
            with pytest.raises(KeyError), monitor.request("q") as ctx:
                ctx.log_agent("coder")
                ctx.log_agent("reviewer")
                raise KeyError("the caller's")
            c = monitor.counters
            assert (c.unavailable, c.agent_runs_unavailable) == (1, 2)


class TestLifecycle:
    """Late, repeated and post-close calls: ignored and counted."""

    def test_end_twice_and_logging_after_end(self, monitor, ring_name):
        ctx = monitor.request("q")
        ctx.log_agent("a")
        assert ctx.end() is True
        assert ctx.end() is False
        ctx.log_quality(score=0.5)
        ctx.log_agent("b")
        ctx.log_intent(bogus=1)
        c = monitor.counters
        assert (c.recorded, c.agent_runs_recorded) == (1, 1)
        assert (c.logged_after_end, c.invalid) == (3, 0)
        assert len(events_in(ring_name)) == 1
        assert len(runs_in(ring_name)) == 1

    def test_use_after_close_twice(self, ring_name):
        monitor = Monitor(ring_name)
        monitor.close()
        monitor.close()
        with monitor.request("q", category="c") as ctx:
            ctx.log_agent("z")
        c = monitor.counters
        assert (c.unavailable, c.agent_runs_unavailable) == (1, 1)
        assert c.recorded == c.failed == 0

    def test_an_exception_in_the_block_is_recorded_and_propagates(
        self, monitor, ring_name
    ):
        with pytest.raises(Boom), monitor.request("q") as ctx:
            ctx.log_routing(confidence=ClassRaises())
            raise Boom("the caller's")
        assert monitor.counters.failed == 1
        with pytest.raises(Boom), monitor.request("q"):
            raise Boom("the caller's")
        (record,) = events_in(ring_name)
        assert record["success"] == 0
        assert labels_in(ring_name)[int(record["error"])] == (
            "Boom: the caller's"
        )

    def test_nested_and_interleaved_requests(self, monitor, ring_name):
        outer = monitor.request("outer", category="o")
        with monitor.request("inner", category="i") as inner:
            outer.log_routing(strategy="s-outer")
            inner.log_routing(strategy="s-inner")
        outer.end()
        events, texts = events_in(ring_name), labels_in(ring_name)
        got = {
            int(r["request_id"]): texts[int(r["routing_strategy"])]
            for r in events
        }
        assert got == {
            inner.request_id: "s-inner",
            outer.request_id: "s-outer",
        }


def test_many_threads_count_every_request(ring_name):
    """Four threads, hostile values among them: every request stored
    once, every refusal counted, none lost."""
    config = load_config(
        {"ring": ring_name, "capacity_records": 32768, "lanes": 2}
    )
    threads, count = 4, 2000

    def work(t: int) -> None:
        for i in range(count):
            with monitor.request(f"q{t}-{i}", category="code") as ctx:
                bad = i % 3 == 0
                ctx.log_intent(domains=["a", Boom() if bad else "b"])
                ctx.log_agent("coder", execution_time_ms=1.0)

    with Monitor(config=config) as monitor:
        workers = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        c = monitor.counters
        assert c.recorded == c.agent_runs_recorded == threads * count
        assert c.invalid == threads * len(range(0, count, 3))
        events = events_in(ring_name)
        assert len(set(events["request_id"].tolist())) == threads * count
        assert len(runs_in(ring_name)) == threads * count


def test_a_request_started_before_fork_is_written_once(ring_name):
    """A context started in the parent and ended in both processes (the
    child falls out of the same ``with``): one record and one run, the
    parent's; the child's own requests are the child's."""
    with Monitor(ring_name) as monitor:
        ctx = monitor.request("parent's", category="c")
        ctx.log_agent("coder")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with monitor.request("child's") as own:
                    own.log_agent("coder")
                c = monitor.counters
                answer = (
                    ctx.end(),
                    own.request_id,
                    (
                        c.recorded,
                        c.agent_runs_recorded,
                        c.ended_in_forked_child,
                    ),
                )
                os.write(write, json.dumps(answer).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        written, child_request, child_counts = json.loads(os.read(read, 256))
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        assert ctx.end() is True
        events, runs = events_in(ring_name), runs_in(ring_name)
    assert written is False
    parents = events[events["request_id"] == ctx.request_id]
    assert parents["pid"].tolist() == [os.getpid()]
    assert (runs["request_id"] == ctx.request_id).sum() == 1
    childs = events[events["request_id"] == child_request]
    assert childs["pid"].tolist() == [pid]
    assert len(events) == 2 and len(runs) == 2
    assert child_counts == [1, 1, 1]  # its own request; the parent's counted


class RaisingClassifier:
    def classify(self, query: str) -> Any:
        raise Boom("classifier down")


class NoIntentClassifier:
    def classify(self, query: str) -> Any:
        return None


class TestCoordinator:
    """``Coordinator`` misused: the request is recorded or counted."""

    @pytest.mark.parametrize(
        ("classifier", "error"),
        [
            (RaisingClassifier(), "Boom: classifier down"),
            (
                NoIntentClassifier(),
                "AttributeError: 'NoneType' object has no attribute "
                "'category'",
            ),
        ],
    )
    def test_a_failing_route_is_recorded_and_raises(
        self, monitor, ring_name, classifier, error
    ):
        """The classifier's exception propagates; the request it broke
        used to vanish, neither recorded nor counted."""
        coordinator = Coordinator(monitor=monitor, classifier=classifier)
        with pytest.raises((Boom, AttributeError)):
            coordinator.route("fix the bug")
        (record,) = events_in(ring_name)
        assert record["success"] == 0
        assert labels_in(ring_name)[int(record["error"])] == error

    def test_complete_with_a_wrong_result_records_the_request(
        self, monitor, ring_name
    ):
        coordinator = Coordinator(monitor=monitor)
        decision = coordinator.route("fix the python bug")
        assert coordinator.complete(decision, {"success": True}) is True
        assert monitor.counters.invalid == 1
        (record,) = events_in(ring_name)
        assert record["request_id"] == decision.context.request_id
        assert labels_in(ring_name)[int(record["intent_category"])] == "code"

    def test_complete_with_a_wrong_decision_is_counted(self, monitor):
        coordinator = Coordinator(monitor=monitor)
        assert coordinator.complete(None, Result(("coder",), True)) is False
        assert monitor.counters.invalid == 1

    def test_complete_with_a_wrong_decision_raises_when_strict(self, strict):
        coordinator = Coordinator(monitor=strict)
        with pytest.raises(InvalidField, match="decision"):
            coordinator.complete(None, Result(("coder",), True))

    def test_hostile_agent_names_in_a_result_never_raise(
        self, monitor, ring_name
    ):
        """Detecting acceptance hashes the names used: a name whose hash
        raises is stored by its value, never raised into the caller."""
        coordinator = Coordinator(monitor=monitor)
        decision = coordinator.route("fix the python bug")
        used = (HashRaises("coder"), HashRaises("reviewer"))
        assert coordinator.complete(decision, Result(used, True)) is True
        (record,) = events_in(ring_name)
        texts = labels_in(ring_name)
        stored = [texts[int(i)] for i in record["actual_agents"] if i]
        assert stored == ["coder", "reviewer"]
        assert record["accepted"] == rec.UNKNOWN_FLAG

    def test_complete_twice_writes_once(self, monitor, ring_name):
        coordinator = Coordinator(monitor=monitor)
        decision = coordinator.route("fix the python bug")
        result = Result(("coder",), True, agents=[AgentResult("coder")])
        assert coordinator.complete(decision, result) is True
        assert coordinator.complete(decision, result) is False
        assert len(events_in(ring_name)) == len(runs_in(ring_name)) == 1
        assert monitor.counters.logged_after_end == 4  # 3 log_*, 1 run


def test_the_list_cache_stays_bounded(monkeypatch, ring_name):
    """Thirty names in random orders of four: hundreds of thousands of
    distinct lists, no new text.  The list cache used to keep them all
    (a leak, ~40 MB per 200k requests); it stays within its bound, and
    every list is still stored as given."""
    monkeypatch.setattr(_checks, "MAX_CACHED_LISTS", 50)
    names = [f"agent-{i}" for i in range(30)]
    rnd = random.Random(7)
    chosen = [rnd.sample(names, 4) for _ in range(300)]
    config = load_config({"ring": ring_name, "capacity_records": 1024})
    with Monitor(config=config) as monitor:
        largest = 0
        for agents in chosen:
            with monitor.request("q") as ctx:
                ctx.log_routing(suggested_agents=list(agents))
            largest = max(largest, len(monitor._label_cache.lists))
        events, texts = events_in(ring_name), labels_in(ring_name)
    assert largest <= 50
    stored = [
        [texts[int(i)] for i in r["suggested_agents"] if i] for r in events
    ]
    assert stored == chosen


def test_an_agent_run_takes_str_subclasses_by_value(monitor, ring_name):
    """Names, errors and outcomes as StrEnum members or str subclasses:
    stored by their values, as the request's own fields are."""
    with monitor.request("q") as ctx:
        ctx.log_agent(
            Agent.CODER, error=SubStr("slow"), outcome=SubStr("cancelled")
        )
    (run,) = runs_in(ring_name)
    texts = labels_in(ring_name)
    assert texts[int(run["agent"])] == "coder"
    assert texts[int(run["error"])] == "slow"
    assert run["outcome"] == rec.AgentOutcome.CANCELLED
    assert monitor.counters.invalid == 0


@pytest.mark.parametrize(
    ("call", "keywords"),
    [
        ("log_routing", {"confidence": ClassRaises()}),
        ("log_execution", {"error": ClassRaises()}),
        ("log_quality", {"score": ClassRaises()}),
        ("log_acceptance", {"accepted": ClassRaises()}),
        ("log_agent", {"execution_time_ms": ClassRaises()}),
        ("log_agent", {"outcome": ClassRaises()}),
    ],
)
def test_strict_hostile_values_raise_invalid_field(strict, call, keywords):
    """Strict mode checks at the call: a value whose own code raises is
    an InvalidField naming the call (it was that value's own exception,
    while end() gave InvalidField for the same value)."""
    ctx = strict.request("q")
    args = ("coder",) if call == "log_agent" else ()
    with pytest.raises(InvalidField, match=call) as raised:
        getattr(ctx, call)(*args, **keywords)
    assert isinstance(raised.value.__cause__, Boom)


def test_a_fork_while_another_thread_holds_the_locks(ring_name):
    """Another thread is mid-way through the slow paths (announcing a
    label, claiming the agents lane, reconnecting) when the process forks:
    the child, where that thread does not exist, must not wait for it.
    It hung, in the at-fork hook itself (the label cache's lock)."""
    with Monitor(ring_name) as monitor:
        locks = [
            monitor._label_cache._lock,
            monitor._agents._lock,
            monitor._reconnecting,
        ]
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            for lock in locks:
                lock.acquire()
            held.set()
            release.wait()
            for lock in reversed(locks):
                lock.release()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with monitor.request("q", category="new in the child") as ctx:
                    ctx.log_agent("coder")
                c = monitor.counters
                monitor.close()
                code = (
                    0 if (c.recorded, c.agent_runs_recorded) == (1, 1) else 2
                )
            finally:
                os._exit(code)
        release.set()
        holder.join()
        status = wait_or_kill(pid, timeout_s=20)
    assert status == 0, "the forked child hung or failed"


def wait_or_kill(pid: int, timeout_s: float) -> int | None:
    """The child's exit code; None if it had to be killed (it hung)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_intern_takes_a_str_subclass_by_value(monitor, ring_name):
    """``Monitor.intern`` kept the subclass object itself as the cache's
    key, so its own ``__hash__`` and ``__eq__`` ran at every later lookup
    (one that raises broke intern into the caller)."""
    assert monitor.intern(HashRaises("coder")) == rec.label_id("coder")
    assert type(next(iter(monitor._label_cache.ids))) is str
    with monitor.request("q", category="coder"):
        pass
    assert monitor.counters.failed == 0
    assert "coder" in labels_in(ring_name).values()


def test_a_monitor_dropped_unclosed_gives_its_lanes_back(ring_name):
    """A careless coordinator makes Monitors and never closes them: once
    one is collected, its lanes and lock descriptors are free again.  They
    stayed held (an open descriptor each) until the process exited, so a
    few unclosed Monitors exhausted the lanes."""
    config = load_config({"ring": ring_name, "lanes": 2})
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(6):
        monitor = Monitor(config=config)
        with monitor.request(f"q{i}") as ctx:
            ctx.log_agent("coder")
        c = monitor.counters
        assert (c.recorded, c.agent_runs_recorded) == (1, 1), i
        del monitor, ctx, c
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) < fds_before + 3
