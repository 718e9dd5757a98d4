"""
Agent runs on the coordinator side: ``log_agent``'s checks, the records in
the agents ring (real shared memory), its spill, a replaced ring and an
agents ring of another layout.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib

import numpy as np
import pytest

import ringbuf
from livemon import Monitor, ipc
from livemon import record as rec
from livemon.config import load_config
from livemon.coordinator import AgentResult, Coordinator, Intent, Result
from livemon.exceptions import InvalidField
from livemon.spill import SpillReader
from tests.livemon.helpers import events_in, labels_in


def runs_in(ring_name: str) -> np.ndarray:
    """Every agent run pending in the agents ring, lane by lane."""
    spec = ipc.agents_ring(load_config({"ring": ring_name}))
    with ipc.attach_ring(spec) as ring:
        parts = [ring.pending(lane).records for lane in range(ring.lanes)]
    return np.concatenate(parts)


def fan_out(monitor: Monitor, i: int = 0) -> int:
    """One parallel request with two agents; return its request id."""
    with monitor.request(f"query {i}", category="code") as ctx:
        ctx.log_intent(category="python")
        ctx.log_routing(strategy="parallel")
        ctx.log_agent(
            "coder",
            execution_time_ms=12.5,
            success=True,
            input_tokens=100,
            output_tokens=40,
            quality_score=0.9,
            outcome="selected",
        )
        ctx.log_agent(
            "reviewer",
            execution_time_ms=900.0,
            success=False,
            error=TimeoutError("slow"),
            outcome=rec.AgentOutcome.CANCELLED,
        )
        return ctx.request_id


class TestLogAgent:
    """What one request's runs become in the ring."""

    def test_runs_follow_their_request(self, monitor, ring_name):
        """Each run is a record naming its request, agent and outcome."""
        request_id = fan_out(monitor)
        runs, labels = runs_in(ring_name), labels_in(ring_name)
        [event] = events_in(ring_name)
        assert len(runs) == 2
        assert (runs["request_id"] == request_id).all()
        assert (runs["request_id"] == event["request_id"]).all()
        assert [labels[a] for a in runs["agent"]] == ["coder", "reviewer"]
        assert runs["outcome"].tolist() == [0, 3]
        assert runs["success"].tolist() == [1, 0]
        assert runs["execution_time_ms"].tolist() == [12.5, 900.0]
        assert runs["input_tokens"].tolist() == [100, -1]
        assert runs["output_tokens"].tolist() == [40, -1]
        assert labels[int(runs["error"][1])] == "TimeoutError: slow"
        # The request's intent category and strategy, copied.
        assert labels[int(runs["query_category"][0])] == "python"
        assert labels[int(runs["routing_strategy"][1])] == "parallel"
        assert (runs["pid"] == os.getpid()).all()
        assert monitor.counters.agent_runs_recorded == 2
        assert monitor.counters.invalid == 0

    def test_outcome_names_and_enum(self, monitor, ring_name):
        """Every outcome name and AgentOutcome is stored as its code."""
        with monitor.request("q") as ctx:
            for name in ("selected", "merged", "discarded", "cancelled"):
                ctx.log_agent(name, outcome=name)
            ctx.log_agent("enum", outcome=rec.AgentOutcome.MERGED)
            ctx.log_agent("none")
        assert runs_in(ring_name)["outcome"].tolist() == [0, 1, 2, 3, 1, -1]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("outcome", "won"),
            ("outcome", True),
            ("outcome", 0),
            ("execution_time_ms", -1.0),
            ("execution_time_ms", float("nan")),
            ("success", 2),
            ("input_tokens", 1.5),
            ("output_tokens", -3),
            ("quality_score", 1.5),
            ("error", 42),
        ],
    )
    def test_bad_value_is_unknown_and_counted(
        self, monitor, strict, ring_name, field, value
    ):
        """Default mode stores it unknown and counts; strict raises."""
        with monitor.request("q") as ctx:
            ctx.log_agent("coder", **{field: value})
        assert monitor.counters.invalid == 1
        [run] = runs_in(ring_name)
        unknown = {"error": 0, "outcome": -1, "success": -1}
        if field in unknown or field.endswith("tokens"):
            assert run[field] == unknown.get(field, -1)
        else:
            assert np.isnan(run[field])
        ctx = strict.request("q")
        with pytest.raises(InvalidField, match=f"agent.{field}"):
            ctx.log_agent("coder", **{field: value})

    def test_bad_name(self, monitor, strict, ring_name):
        """A run without a valid name is stored with no agent, counted."""
        with monitor.request("q") as ctx:
            ctx.log_agent(None)
            ctx.log_agent("")
            ctx.log_agent(7)
        assert monitor.counters.invalid == 3
        assert runs_in(ring_name)["agent"].tolist() == [0, 0, 0]
        with pytest.raises(InvalidField, match="agent"):
            strict.request("q").log_agent(None)

    def test_unknown_keyword(self, monitor, strict):
        """An unknown keyword is counted, the run still recorded."""
        with monitor.request("q") as ctx:
            ctx.log_agent("coder", latency=3)
        assert monitor.counters.invalid == 1
        assert monitor.counters.agent_runs_recorded == 1
        with pytest.raises(InvalidField, match="latency"):
            strict.request("q").log_agent("coder", latency=3)

    def test_beyond_the_limit_is_counted_not_raised(self, strict, ring_name):
        """Runs beyond MAX_AGENT_RUNS are counted, even in strict mode."""
        with strict.request("q") as ctx:
            for i in range(rec.MAX_AGENT_RUNS + 3):
                ctx.log_agent(f"agent {i}")
        assert len(runs_in(ring_name)) == rec.MAX_AGENT_RUNS
        assert strict.counters.agent_runs_over_limit == 3

    def test_after_end(self, monitor, strict):
        """A late run is counted (strict: raised), never recorded."""
        ctx = monitor.request("q")
        ctx.end()
        ctx.log_agent("coder")
        assert monitor.counters.logged_after_end == 1
        assert monitor.counters.agent_runs_recorded == 0
        ctx = strict.request("q")
        ctx.end()
        with pytest.raises(InvalidField, match="after end"):
            ctx.log_agent("coder")

    def test_no_runs_no_agents_lane(self, monitor, ring_name):
        """A process that logs no agent never claims an agents lane."""
        with monitor.request("q") as ctx:
            ctx.log_execution(success=True)
        with pytest.raises(ringbuf.RingNotFound):
            runs_in(ring_name)

    def test_coordinator_complete(self, monitor, ring_name):
        """``Result.agents`` become agent runs of the request."""
        coordinator = Coordinator(monitor)
        decision = coordinator.route("fix this python bug")
        coordinator.complete(
            decision,
            Result(
                ("coder",),
                True,
                agents=[
                    AgentResult("coder", 10.0, True, outcome="selected"),
                    AgentResult("reviewer", 20.0, True, outcome="discarded"),
                ],
            ),
        )
        runs, labels = runs_in(ring_name), labels_in(ring_name)
        assert [labels[a] for a in runs["agent"]] == ["coder", "reviewer"]
        assert runs["outcome"].tolist() == [0, 2]
        assert (runs["request_id"] == decision.context.request_id).all()

    @pytest.mark.parametrize(
        "agents",
        [
            [{"name": "coder"}],
            ["coder"],
            5,
            "coder",
            [AgentResult("coder"), object()],
        ],
        ids=["dicts", "names", "int", "str", "mixed"],
    )
    def test_coordinator_complete_bad_agents(
        self, monitor, strict, ring_name, agents
    ):
        """Anything but AgentResults in ``Result.agents`` is counted, the
        request still recorded (strict: InvalidField), never raised."""
        coordinator = Coordinator(monitor)
        decision = coordinator.route("fix this python bug")
        assert coordinator.complete(
            decision, Result(("coder",), True, agents=agents)
        )
        assert monitor.counters.recorded == 1
        assert monitor.counters.invalid >= 1
        good = monitor.counters.agent_runs_recorded
        assert good == (
            1 if isinstance(agents, list) and len(agents) == 2 else 0
        )
        strict_coordinator = Coordinator(strict)
        decision = strict_coordinator.route("fix this python bug")
        with pytest.raises(InvalidField, match="agents"):
            strict_coordinator.complete(
                decision, Result(("coder",), True, agents=agents)
            )

    def test_coordinator_complete_agents_none(self, monitor):
        """``agents=None`` means no runs: nothing counted."""
        coordinator = Coordinator(monitor)
        decision = coordinator.route("q")
        assert coordinator.complete(
            decision, Result(("x",), True, agents=None)
        )
        assert monitor.counters.invalid == 0


def tiny(tmp_path: pathlib.Path, ring_name: str, **values: object):
    """A config with 8-record lanes, spilling under tmp_path."""
    return load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "livemon.db"),
            "lanes": 2,
            "capacity_records": 8,
            "spill_min_free_bytes": 0,
            **values,
        }
    )


class TestFullLane:
    """No daemon drains the agents ring (say, one of the last release)."""

    def test_runs_spill(self, tmp_path, ring_name):
        """Runs beyond the lane go to this lane's spill files, counted."""
        config = tiny(tmp_path, ring_name)
        with Monitor(config=config) as monitor:
            for i in range(10):
                fan_out(monitor, i)
            counters = monitor.counters
        assert counters.agent_runs_recorded == 8
        assert counters.agent_runs_spilled == 12
        assert counters.agent_runs_dropped == 0
        reader = SpillReader(
            ipc.spill_root(config), ring_name + ".agents", rec.AGENT_RUN_DTYPE
        )
        spilled = [
            b.records for key in reader.lanes() for b in reader.read(*key)
        ]
        assert sum(len(r) for r in spilled) == 12

    def test_without_spill_runs_are_dropped(self, tmp_path, ring_name):
        """With spilling off, a full lane's runs are counted as dropped."""
        with Monitor(config=tiny(tmp_path, ring_name, spill=False)) as mon:
            for i in range(10):
                fan_out(mon, i)
            assert mon.counters.agent_runs_dropped == 12
            assert mon.counters.recorded == 8  # the events lane is full too


class TestRingLayout:
    """The agents ring is separate: its trouble never costs a request."""

    def test_foreign_layout_loses_only_runs(self, ring_name):
        """An agents ring of another dtype: requests go on, runs counted."""
        other = np.dtype([("x", "<i8")])
        with (
            ringbuf.Ring.create(ring_name + ".agents", other, 2, 8),
            Monitor(ring_name) as monitor,
        ):
            fan_out(monitor)
            fan_out(monitor)
            assert monitor.counters.recorded == 2
            assert monitor.counters.agent_runs_unavailable == 4
            assert len(events_in(ring_name)) == 2

    def test_replaced_ring_is_followed(self, monitor, ring_name):
        """A retired agents ring: the runs move to the new one, the ones
        no consumer drained carried along."""
        fan_out(monitor)
        spec = ipc.agents_ring(monitor.config)
        with ipc.attach_ring(spec) as old:
            ringbuf.unlink(spec.name)
            with ipc.open_ring(monitor.config, spec) as new:
                old.retire()
                fan_out(monitor)
                runs = np.concatenate(
                    [new.pending(lane).records for lane in range(new.lanes)]
                )
        assert len(runs) == 4
        assert monitor.counters.agent_runs_recorded == 4
        assert monitor.counters.agent_runs_dropped == 0


def test_forked_child_without_a_lane_counts_runs_unavailable(ring_name):
    """More forked workers than lanes: a child whose agents writer finds
    no lane loses its runs as unavailable (as events' lanes_exhausted),
    not as dropped from a full lane, and says so once."""
    config = load_config({"ring": ring_name, "lanes": 1})
    with Monitor(config=config) as monitor:
        fan_out(monitor)  # the parent holds the only lane of each ring
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fan_out(monitor)
                fan_out(monitor)
                c = monitor.counters
                said = (c.agent_runs_unavailable, c.agent_runs_dropped)
                os.write(write, repr(said).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        answer = os.read(read, 64)
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
    assert answer == b"(4, 0)"


def _child_runs(ring_name: str) -> None:
    with Monitor(ring_name) as monitor:
        fan_out(monitor)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_write_their_own_lanes(ring_name, method):
    """Runs of several processes land in their own lanes, none lost."""
    context = multiprocessing.get_context(method)
    children = [
        context.Process(target=_child_runs, args=(ring_name,))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    runs = runs_in(ring_name)
    assert len(runs) == 6
    assert len(set(runs["pid"].tolist())) == 3


class Hostile:
    """A value whose every method raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")


def test_hostile_values_never_raise(monitor, ring_name):
    """Default mode: hostile values are refused and counted, the run and
    the request still recorded."""
    hostile = Hostile()
    with monitor.request("q") as ctx:
        ctx.log_agent(
            hostile,
            execution_time_ms=hostile,
            success=hostile,
            error=hostile,
            input_tokens=hostile,
            quality_score=hostile,
            outcome=hostile,
        )
    assert monitor.counters.recorded == 1
    assert monitor.counters.agent_runs_recorded == 1
    assert monitor.counters.invalid == 7
    [run] = runs_in(ring_name)
    assert run["agent"] == 0 and run["outcome"] == -1


def test_strict_unavailable_agents_ring(ring_name):
    """Strict: an agents ring that cannot be opened raises, typed."""
    from livemon.exceptions import MonitoringUnavailable

    other = np.dtype([("x", "<i8")])
    with (
        ringbuf.Ring.create(ring_name + ".agents", other, 2, 8),
        Monitor(ring_name, strict=True) as monitor,
    ):
        ctx = monitor.request("q")
        ctx.log_agent("coder")
        with pytest.raises(MonitoringUnavailable, match="agents"):
            ctx.end()
        assert monitor.counters.recorded == 1  # the request went first


@pytest.mark.parametrize(
    ("used", "invalid"),
    [(None, 0), (5, 1), (["coder", ["x"]], 1), (iter(["coder"]), 0)],
    ids=["none", "int", "unhashable", "generator"],
)
def test_complete_takes_odd_agents_used(monitor, used, invalid):
    """``Result.agents_used`` that is not a list of names is counted (a
    generator is taken as its list); the request is still recorded."""
    coordinator = Coordinator(monitor)
    decision = coordinator.route("fix this python bug")
    assert coordinator.complete(decision, Result(used, True))
    assert monitor.counters.recorded == 1
    assert monitor.counters.invalid == invalid


def test_route_takes_a_classifier_without_domains(monitor):
    """A custom classifier whose intent has domains=None: routed, recorded."""

    class NoDomains:
        def classify(self, query):
            return Intent("code", None)  # type: ignore[arg-type]

    coordinator = Coordinator(monitor, classifier=NoDomains())
    decision = coordinator.route("q")
    assert decision.context.end()
