"""
Monitor and RequestContext: one exact record per request, failures counted
and never raised (unless strict), fork safety, independent processes.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringbuf
from livemon import InvalidField, Monitor, MonitoringUnavailable
from livemon import labels as labels_module
from livemon import monitor as monitor_module
from livemon.config import load_config
from livemon.context import query_hash
from livemon.coordinator import Coordinator, Result
from livemon.record import (
    LABEL_DTYPE,
    MAX_AGENTS,
    MAX_TEXT_BYTES,
    NO_LABEL,
    RECORD_DTYPE,
    UNKNOWN_COUNT,
    UNKNOWN_FLAG,
)
from tests.livemon.helpers import events_in, labels_in, names

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def full_request(monitor, query="fix my code"):
    """Log every stage of one request."""
    with monitor.request(query, category="support") as ctx:
        ctx.log_intent(
            category="code", domains=["python", "sql"], complexity=4
        )
        ctx.log_routing(
            suggested_agents=["coder", "reviewer"],
            strategy="parallel",
            confidence=0.8,
        )
        ctx.log_execution(
            actual_agents=["coder"],
            execution_time_ms=12.5,
            success=True,
            token_count=321,
            context_size_kb=2.5,
        )
        ctx.log_quality(
            score=0.9, task_completed=True, code_valid=True, tests_passed=False
        )
        ctx.log_acceptance(accepted=False, override_reason="user chose")
    return ctx


class TestRecord:
    """One request, one exact record."""

    def test_every_field_arrives_exactly(self, monitor, ring_name):
        """One request, one record; numbers and texts as logged."""
        ctx = full_request(monitor)
        (event,) = events_in(ring_name)
        labels = labels_in(ring_name)
        assert event["request_id"] == ctx.request_id
        assert event["pid"] == os.getpid()
        assert event["query_hash"] == query_hash("fix my code")
        assert labels[event["query_category"]] == "support"
        assert labels[event["intent_category"]] == "code"
        assert names(event["intent_domains"], labels) == ["python", "sql"]
        assert names(event["suggested_agents"], labels) == [
            "coder",
            "reviewer",
        ]
        assert names(event["actual_agents"], labels) == ["coder"]
        assert labels[event["routing_strategy"]] == "parallel"
        assert labels[event["override_reason"]] == "user chose"
        assert (event["query_complexity"], event["token_count"]) == (4, 321)
        assert (event["confidence"], event["quality_score"]) == (0.8, 0.9)
        assert (event["execution_time_ms"], event["context_size_kb"]) == (
            12.5,
            2.5,
        )
        flags = [
            event[f]
            for f in (
                "accepted",
                "success",
                "task_completed",
                "code_valid",
                "tests_passed",
            )
        ]
        assert flags == [0, 1, 1, 1, 0]
        assert event["error"] == 0
        assert 0 < event["overhead_ns"] < 10**9
        assert monitor.counters.recorded == 1

    def test_nothing_logged_is_unknown_not_zero(self, monitor, ring_name):
        """Unlogged floats are NaN, flags and counts -1, labels 0."""
        monitor.request("q").end()
        (event,) = events_in(ring_name)
        for field in (
            "confidence",
            "execution_time_ms",
            "quality_score",
            "context_size_kb",
        ):
            assert math.isnan(event[field])
        for field in (
            "accepted",
            "success",
            "task_completed",
            "code_valid",
            "tests_passed",
            "token_count",
            "query_complexity",
        ):
            assert event[field] == -1
        assert event["intent_category"] == 0
        assert not event["suggested_agents"].any()

    def test_exception_in_the_block_is_recorded_and_propagates(
        self, monitor, ring_name
    ):
        """The request's exception becomes its error; routing sees it."""
        with pytest.raises(KeyError), monitor.request("q"):
            raise KeyError("agent missing")
        (event,) = events_in(ring_name)
        assert (
            labels_in(ring_name)[event["error"]] == "KeyError: 'agent missing'"
        )
        assert event["success"] == 0

    def test_end_twice_writes_once(self, monitor, ring_name):
        """The split form: begin ... end; a second end does nothing."""
        ctx = monitor.request("q")
        assert ctx.end() is True
        assert ctx.end() is False
        assert len(events_in(ring_name)) == 1

    def test_long_error_is_truncated_visibly(self, monitor, ring_name):
        """Errors up to 4 KiB are exact; longer ones carry a marker."""
        exact = "e" * (MAX_TEXT_BYTES - 10)
        with monitor.request("a") as ctx:
            ctx.log_execution(error=exact)
        with monitor.request("b") as ctx:
            ctx.log_execution(error="x" * 10_000)
        first, second = events_in(ring_name)
        labels = labels_in(ring_name)
        assert labels[first["error"]] == exact
        assert labels[second["error"]].startswith("x" * 1000)
        assert "truncated, 10000 bytes" in labels[second["error"]]

    def test_each_label_is_sent_once_per_process(self, monitor, ring_name):
        """Repeated texts go to the labels ring only the first time."""
        for _ in range(5):
            full_request(monitor)
        with ringbuf.Ring.attach(ring_name + ".labels", LABEL_DTYPE) as ring:
            sent = sum(ring.lane_state(i).head for i in range(ring.lanes))
        assert sent == len(labels_in(ring_name)) == 8


BAD_CALLS = [
    ("log_intent", {"category": 7}, "category"),
    ("log_intent", {"category": ""}, "category"),
    ("log_intent", {"category": "x" * 300}, "category"),
    ("log_intent", {"domains": "python"}, "domains"),
    ("log_intent", {"complexity": -1}, "complexity"),
    ("log_intent", {"complexity": True}, "complexity"),
    ("log_routing", {"confidence": 1.5}, "confidence"),
    ("log_routing", {"confidence": float("nan")}, "confidence"),
    ("log_routing", {"confidence": "high"}, "confidence"),
    (
        "log_routing",
        {"suggested_agents": ["a"] * (MAX_AGENTS + 1)},
        "suggested_agents",
    ),
    ("log_routing", {"suggested_agents": [1, 2]}, "suggested_agents"),
    ("log_execution", {"execution_time_ms": -3.0}, "execution_time_ms"),
    (
        "log_execution",
        {"execution_time_ms": float("inf")},
        "execution_time_ms",
    ),
    ("log_execution", {"success": "yes"}, "success"),
    ("log_execution", {"error": 42}, "error"),
    ("log_execution", {"token_count": 1.5}, "token_count"),
    ("log_quality", {"score": -0.1}, "score"),
    ("log_quality", {"tests_passed": 2}, "tests_passed"),
    ("log_acceptance", {"override_reason": b"bytes"}, "override_reason"),
    ("log_acceptance", {"acepted": True}, "acepted"),
]

# Where each refused field lands, and the unknown value it must hold.
UNKNOWN_COLUMNS = {
    "category": ("intent_category", NO_LABEL),
    "domains": ("intent_domains", NO_LABEL),
    "complexity": ("query_complexity", UNKNOWN_COUNT),
    "confidence": ("confidence", math.nan),
    "suggested_agents": ("suggested_agents", NO_LABEL),
    "execution_time_ms": ("execution_time_ms", math.nan),
    "success": ("success", UNKNOWN_FLAG),
    "error": ("error", NO_LABEL),
    "token_count": ("token_count", UNKNOWN_COUNT),
    "score": ("quality_score", math.nan),
    "tests_passed": ("tests_passed", UNKNOWN_FLAG),
    "override_reason": ("override_reason", NO_LABEL),
}


class TestValidation:
    """Bad values: typed errors in strict mode, unknown and counted else."""

    @pytest.mark.parametrize("text", [None, 7, b"coder", ["coder"]])
    def test_intern_refuses_what_is_not_text(self, monitor, text):
        """A direct call with a non-str is a typed error naming it."""
        with pytest.raises(InvalidField, match="a label is a str"):
            monitor.intern(text)

    @pytest.mark.parametrize(("method", "kwargs", "field"), BAD_CALLS)
    def test_strict_names_the_field(self, strict, method, kwargs, field):
        """Strict mode: a typed error naming the field, at the call."""
        ctx = strict.request("q")
        with pytest.raises(InvalidField) as info:
            getattr(ctx, method)(**kwargs)
        assert info.value.field == field
        assert isinstance(info.value, ValueError)

    @pytest.mark.parametrize(("method", "kwargs", "field"), BAD_CALLS)
    def test_lenient_stores_unknown_and_counts(
        self, monitor, ring_name, method, kwargs, field
    ):
        """Default mode: the request goes on; the value is unknown."""
        with monitor.request("q") as ctx:
            getattr(ctx, method)(**kwargs)
        (event,) = events_in(ring_name)
        assert monitor.counters.invalid >= 1
        assert monitor.counters.recorded == 1
        if field in UNKNOWN_COLUMNS:
            column, sentinel = UNKNOWN_COLUMNS[field]
            stored = event[column]
            if isinstance(sentinel, float):
                assert math.isnan(stored)
            else:
                assert (stored == sentinel).all()

    def test_invalid_field_pickles(self):
        """The error crosses process boundaries intact."""
        import pickle

        error = pickle.loads(pickle.dumps(InvalidField("score", "too big")))
        assert (error.field, error.reason) == ("score", "too big")

    # One monitor serves every example; each reads back its own record.
    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        confidence=st.one_of(
            st.none(),
            st.floats(),
            st.integers(),
            st.text(max_size=3),
            st.booleans(),
        ),
        score=st.one_of(st.none(), st.floats(), st.integers()),
        ms=st.one_of(st.none(), st.floats(), st.integers()),
    )
    def test_numbers_are_stored_only_when_valid(
        self, monitor, ring_name, confidence, score, ms
    ):
        """Property: a stored number is the value given, else NaN."""
        with monitor.request("q") as ctx:
            ctx.log_routing(confidence=confidence)
            ctx.log_quality(score=score)
            ctx.log_execution(execution_time_ms=ms)
        event = events_in(ring_name)[-1]

        def expected(value, high):
            ok = (
                type(value) in (int, float)
                and not isinstance(value, bool)
                and 0 <= value <= high
            )
            return float(value) if ok else None

        for column, value, high in (
            ("confidence", confidence, 1.0),
            ("quality_score", score, 1.0),
            ("execution_time_ms", ms, sys.float_info.max),
        ):
            want = expected(value, high)
            if want is None:
                assert math.isnan(event[column])
            else:
                assert event[column] == want


class TestFailuresNeverBreakRouting:
    """Ring trouble is counted, never raised (unless strict)."""

    def test_full_ring_drops_and_counts(self, ring_name):
        """With no daemon draining, a full lane drops, never blocks."""
        config = load_config(
            {"ring": ring_name, "capacity_records": 4, "spill": False}
        )
        with Monitor(config=config) as mon:
            results = [mon.request("q").end() for _ in range(6)]
            assert results == [True] * 4 + [False] * 2
            assert (mon.counters.recorded, mon.counters.dropped) == (4, 2)

    def test_full_ring_raises_in_strict_mode(self, ring_name):
        """Strict mode turns the drop into MonitoringUnavailable."""
        config = load_config(
            {"ring": ring_name, "capacity_records": 2, "spill": False}
        )
        with Monitor(config=config, strict=True) as mon:
            mon.request("q").end()
            mon.request("q").end()
            with pytest.raises(MonitoringUnavailable, match="full"):
                mon.request("q").end()

    def test_no_free_lane_is_counted_not_raised(self, ring_name, caplog):
        """A ring whose lanes are all taken: requests still complete, and
        the log says why once, however often the lane is tried again."""
        config = load_config({"ring": ring_name, "lanes": 1})
        with Monitor(config=config) as first, Monitor(config=config) as second:
            assert first.available and not second.available
            second.retry_interval_s = 0.0
            with second.request("q") as ctx:
                ctx.log_routing(confidence=0.5)
            second.request("q").end()
            told = [r for r in caplog.records if "raise 'lanes'" in r.message]
            assert len(told) == 1
            assert second.counters.lanes_exhausted == 2
            assert second.counters.unavailable == 0
            with pytest.raises(MonitoringUnavailable, match="lanes"):
                Monitor(config=config, strict=True)

    def test_ring_of_another_layout_is_unavailable(self, ring_name):
        """A foreign segment under our name does not break the caller."""
        other = ringbuf.Ring.create(ring_name, [("x", "<u8")], 1, 4)
        try:
            with Monitor(ring_name) as mon:
                assert mon.request("q").end() is False
                assert mon.counters.unavailable == 1
        finally:
            other.close()


def child_records(monitor, out) -> None:
    """In a forked child: record one request, report lane and pid."""
    full_request(monitor, "from child")
    out.put((monitor._events.lane, os.getpid()))


class TestProcesses:
    """Forked children and independent processes share one ring."""

    def test_forked_child_records_on_its_own_lane(self, monitor, ring_name):
        """Parent and child both record; labels are re-announced."""
        full_request(monitor, "from parent")
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        proc = ctx.Process(target=child_records, args=(monitor, out))
        proc.start()
        child_lane, child_pid = out.get(timeout=30)
        proc.join(timeout=10)
        assert child_lane != monitor._events.lane
        full_request(monitor, "parent again")
        events = events_in(ring_name)
        assert sorted(events["pid"].tolist()) == sorted(
            [os.getpid(), os.getpid(), child_pid]
        )
        with ringbuf.Ring.attach(ring_name + ".labels", LABEL_DTYPE) as ring:
            assert ring.lane_state(child_lane).head == 8
        assert len(set(events["request_id"].tolist())) == 3

    def test_independent_processes_write_concurrently(self, ring_name):
        """Coordinator processes started on their own share one ring."""
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "livemon.demo",
                    "--ring",
                    ring_name,
                    "--requests",
                    "500",
                    "--seed",
                    str(seed),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for seed in range(3)
        ]
        counters = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        events = events_in(ring_name)
        assert len(events) == sum(c["recorded"] for c in counters) == 1500
        assert len(set(events["pid"].tolist())) == 3
        labels = labels_in(ring_name)
        for column in ("intent_category", "routing_strategy"):
            assert all(int(i) in labels for i in events[column])


class TestCoordinator:
    """Coordinator.route and complete write one record."""

    def test_route_and_complete_record_one_request(self, monitor, ring_name):
        """route() classifies and selects; complete() writes the record."""
        coordinator = Coordinator(monitor)
        decision = coordinator.route("please fix this python bug")
        assert decision.intent.category == "code"
        assert decision.agents == ("coder", "reviewer")
        assert coordinator.complete(
            decision,
            Result(
                agents_used=("coder",),
                success=True,
                execution_time_ms=40.0,
                quality_score=0.7,
                override_reason="reviewer busy",
            ),
        )
        (event,) = events_in(ring_name)
        labels = labels_in(ring_name)
        assert event["accepted"] == 0
        assert labels[event["override_reason"]] == "reviewer busy"
        assert names(event["suggested_agents"], labels) == [
            "coder",
            "reviewer",
        ]

    def test_acceptance_is_detected(self, monitor, ring_name):
        """Using exactly the suggested agents counts as accepted."""
        coordinator = Coordinator(monitor)
        decision = coordinator.route("summary email please")
        coordinator.complete(
            decision, Result(agents_used=decision.agents, success=True)
        )
        assert events_in(ring_name)[0]["accepted"] == 1


def drain_labels(ring_name):
    """Consume every pending label record, as the daemon would; return them."""
    texts = {}
    with ringbuf.Ring.attach(ring_name + ".labels", LABEL_DTYPE) as ring:
        for lane in range(ring.lanes):
            batch = ring.pending(lane)
            for record in batch.records:
                raw = record["text"][: record["length"]].tobytes()
                texts[int(record["label_id"])] = raw.decode()
            ring.advance(lane, batch.end_seq)
    return texts


@pytest.fixture
def quick_retry(monkeypatch):
    """Monitors retry the rings after 10 ms instead of 5 s."""
    monkeypatch.setattr(Monitor, "retry_interval_s", 0.01)


class TestReconnect:
    """An unavailable ring is tried again after the retry interval."""

    def test_recovers_when_a_foreign_ring_is_unlinked(
        self, ring_name, quick_retry
    ):
        """Unavailable at start; once the ring is gone, records flow."""
        other = ringbuf.Ring.create(ring_name, [("x", "<u8")], 1, 4)
        with Monitor(ring_name) as mon:
            assert mon.request("q").end() is False
            other.close()
            ringbuf.unlink(ring_name)
            time.sleep(0.02)
            full_request(mon)
            assert mon.available
            assert mon.counters.recorded == 1
            assert mon.counters.unavailable == 1
        (event,) = events_in(ring_name)
        assert labels_in(ring_name)[event["routing_strategy"]] == "parallel"

    def test_recovers_when_a_lane_is_released(self, ring_name, quick_retry):
        """No lane at start (counted apart); a lane freed is taken."""
        config = load_config({"ring": ring_name, "lanes": 1})
        first = Monitor(config=config)
        with Monitor(config=config) as second:
            assert second.request("q").end() is False
            assert second.counters.lanes_exhausted == 1
            first.close()
            time.sleep(0.02)
            assert second.request("q").end() is True
            assert second.counters.recorded == 1

    def test_no_retry_before_the_interval(self, ring_name):
        """Within the interval a request is counted, not reconnected."""
        other = ringbuf.Ring.create(ring_name, [("x", "<u8")], 1, 4)
        try:
            with Monitor(ring_name) as mon:
                other.close()
                ringbuf.unlink(ring_name)
                assert mon.request("q").end() is False
                assert not mon.available
        finally:
            other.close()


class TestClose:
    """close() is final, and a half-open connection leaks no lane."""

    def test_requests_after_close_are_counted_not_reconnected(
        self, ring_name, quick_retry
    ):
        """No ring is reopened after close()."""
        mon = Monitor(ring_name)
        mon.close()
        time.sleep(0.02)
        assert mon.request("q").end() is False
        assert mon.counters.unavailable == 1
        assert not mon.available and mon._rings is None
        mon.close()  # idempotent

    def test_request_after_close_raises_in_strict_mode(self, ring_name):
        """Strict mode says the monitor is closed."""
        mon = Monitor(ring_name, strict=True)
        mon.close()
        with pytest.raises(MonitoringUnavailable, match="closed"):
            mon.request("q").end()

    def test_failed_labels_writer_releases_the_events_lane(self, ring_name):
        """The events lane is given back when the labels lane is refused."""
        events = ringbuf.Ring.create(ring_name, RECORD_DTYPE, 1, 4)
        labels = ringbuf.Ring.create(ring_name + ".labels", LABEL_DTYPE, 1, 4)
        holder = labels.writer()
        try:
            with Monitor(ring_name) as mon:
                assert not mon.available
                with events.writer() as writer:  # the lane is free
                    assert writer.lane == 0
        finally:
            holder.close()
            labels.close()
            events.close()


class TestLabels:
    """Label texts are never lost while their events survive."""

    def test_labels_refused_by_a_full_lane_are_announced_later(
        self, ring_name
    ):
        """Held texts go out before later records, once there is room."""
        config = load_config(
            {"ring": ring_name, "label_capacity_records": 2, "spill": False}
        )
        with Monitor(config=config) as mon:
            full_request(mon)
            assert mon.counters.labels_dropped == 6
            texts = drain_labels(ring_name)
            for _ in range(3):
                mon.request("q").end()
                texts.update(drain_labels(ring_name))
            assert mon.counters.labels_lost == 0
        (*_, event) = events_in(ring_name)
        wanted = ["support", "code", "python", "sql", "coder", "reviewer"]
        wanted += ["parallel", "user chose"]
        assert sorted(texts.values()) == sorted(wanted)
        assert event["query_hash"] == query_hash("q")

    def test_held_labels_are_bounded_and_the_rest_counted(
        self, ring_name, monkeypatch
    ):
        """Beyond the bound, the oldest held text is given up, counted."""
        monkeypatch.setattr(labels_module, "MAX_PENDING_LABELS", 2)
        config = load_config(
            {"ring": ring_name, "label_capacity_records": 2, "spill": False}
        )
        with Monitor(config=config) as mon:
            full_request(mon)
            assert mon.counters.labels_dropped == 6
            assert mon.counters.labels_lost == 4


class TestGeometry:
    """A ring that exists with another geometry is used, and said so."""

    def test_mismatch_is_logged_once_and_exposed(self, ring_name, caplog):
        """One warning on logger "livemon"; records still flow."""
        existing = ringbuf.Ring.create(ring_name, RECORD_DTYPE, 2, 8)
        try:
            with (
                caplog.at_level(logging.WARNING, logger="livemon"),
                Monitor(ring_name) as mon,
            ):
                assert mon.request("q").end() is True
            assert "has 2 lanes of 8 records" in mon.geometry_mismatch
            warnings = [r for r in caplog.records if r.name == "livemon"]
            assert len(warnings) == 1
            assert "another geometry" in warnings[0].getMessage()
        finally:
            existing.close()

    def test_matching_geometry_is_silent(self, monitor):
        """A ring created from the config has no mismatch."""
        assert monitor.geometry_mismatch is None


class TestForkHook:
    """One process-wide fork hook renews every live monitor."""

    def test_a_monitor_registers_no_hook_of_its_own(
        self, ring_name, monkeypatch
    ):
        """Creating monitors adds no livemon at-fork callbacks."""
        added = []
        real = os.register_at_fork

        def record(**hooks):
            added.extend(hooks.values())
            real(**hooks)

        monkeypatch.setattr(os, "register_at_fork", record)
        for _ in range(3):
            Monitor(ring_name).close()
        assert not [f for f in added if f.__module__.startswith("livemon")]

    def test_hook_renews_identity_once_per_new_pid(self, monitor, monkeypatch):
        """Without forking: a new pid renews ids and forgets labels."""
        monitor.intern("coder")
        first_id = monitor.request("q").request_id
        monkeypatch.setattr(os, "getpid", lambda: 424242)
        monitor_module._renew_monitors_after_fork()
        assert monitor.pid == 424242
        assert monitor._label_cache.ids == {}
        renewed = monitor.request("q").request_id
        assert renewed & 0xFFFFFFFF == 1  # a new run of ids
        assert first_id & 0xFFFFFFFF == 1
        monitor.intern("coder")
        monitor_module._renew_monitors_after_fork()  # same pid: no change
        assert "coder" in monitor._label_cache.ids

    def test_dead_monitors_leave_the_registry(self, ring_name):
        """The registry holds monitors weakly."""
        Monitor(ring_name).close()
        gc.collect()
        assert all(m._rings is not None for m in monitor_module._MONITORS)
