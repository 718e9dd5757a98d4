"""
Feedback costs once per host: total CPU of every coordinator's feedback
thread with 1, 4, 16 and 64 real coordinator processes, against the same
measure of the previous design (each process recomputing the window's
statistics every 0.5 s), in the same run.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time

import numpy as np
import pytest

from bench import simulation
from livemon import Monitor, ipc
from livemon.config import load_config
from livemon.coordinator import AgentResult, Coordinator, Result
from livemon.feedback import FeedbackLoop, Policy
from livemon.feedback.stats import feedback_stats
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE

pytestmark = pytest.mark.benchmark(group="feedback-cpu")

SPAWN = multiprocessing.get_context("spawn")
WINDOW = 2048  # records per lane, as in the measure
HOST_RATE = 200.0  # requests per second, all processes together
MEASURE_S = 6.0
AGENTS = ("coder", "reviewer", "writer", "analyst")


def _config(ring: str, lanes: int):  # type: ignore[no-untyped-def]
    return load_config(
        {"ring": ring, "lanes": lanes, "capacity_records": 2 * WINDOW}
    )


def _prefill(ring: str, lanes: int) -> None:
    """Every lane holds a full window of requests and agent runs."""
    config = _config(ring, lanes)
    rng = np.random.default_rng(1)
    for spec, dtype in (
        (ipc.events_ring(config), RECORD_DTYPE),
        (ipc.agents_ring(config), AGENT_RUN_DTYPE),
    ):
        with ipc.open_ring(config, spec) as events:
            writers = [events.writer() for _ in range(lanes)]
            for writer in writers:
                records = np.zeros(WINDOW, dtype)
                records["timestamp_ns"] = np.arange(WINDOW)
                records["success"] = rng.random(WINDOW) < 0.95
                records["execution_time_ms"] = rng.lognormal(7, 0.5, WINDOW)
                if dtype is RECORD_DTYPE:
                    records["actual_agents"][:, 0] = rng.integers(1, 5, WINDOW)
                    records["intent_category"] = rng.integers(1, 4, WINDOW)
                    records["accepted"] = 1
                else:
                    records["agent"] = rng.integers(1, 5, WINDOW)
                writer.put_many(records)
            for writer in writers:
                writer.close()


def _previous_design(config, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
    """What every process did before: the whole window, every 0.5 s."""
    events = ipc.attach_ring(ipc.events_ring(config))
    while not stop.wait(0.5):
        feedback_stats(events.window(WINDOW).records)
    events.close()


def coordinator(ring, lanes, rate, previous, ready, go, out) -> None:  # type: ignore[no-untyped-def]
    """One coordinator process: traffic at ``rate``, feedback in a thread;
    reports its feedback thread's CPU seconds over the measured span."""
    config = _config(ring, lanes)
    rng = random.Random()
    with Monitor(config=config) as monitor:
        stop = threading.Event()
        loop = None
        if previous:
            thread = threading.Thread(
                target=_previous_design, args=(config, stop), daemon=True
            )
            thread.start()
            ident = thread.ident
        else:
            loop = FeedbackLoop(monitor, Policy())
            loop.start()
            ident = loop.thread_id
        coordinator = Coordinator(monitor, feedback=loop)
        clock = time.pthread_getcpuclockid(ident)
        ready.put(1)
        start_at, end_at = go.get()
        cpu = {}
        while time.time() < end_at:
            now = time.time()
            if "start" not in cpu and now >= start_at:
                cpu["start"] = time.clock_gettime(clock)
            decision = coordinator.route("fix the failing python test")
            agents = decision.agents
            coordinator.complete(
                decision,
                Result(
                    agents_used=agents,
                    success=True,
                    execution_time_ms=1000.0,
                    agents=[
                        AgentResult(a, 1000.0, rng.random() < 0.95)
                        for a in agents
                    ],
                ),
            )
            time.sleep(rng.expovariate(rate))
        used = time.clock_gettime(clock) - cpu.get("start", 0.0)
        out.put((used, loop.leading if loop is not None else False))
        stop.set()
        if loop is not None:
            loop.close()


def _measure(
    ring: str, processes: int, previous: bool
) -> tuple[float, float, float, int]:
    """Feedback CPU (cores) of ``processes`` coordinators: in all, the
    leader's, a follower's on average; and how many of them led."""
    _prefill(ring, processes)
    ready, go, out = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=coordinator,
            args=(
                ring,
                processes,
                HOST_RATE / processes,
                previous,
                ready,
                go,
                out,
            ),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        # A second for every leader election and warm start to settle.
        start_at = time.time() + 2.0
        for _ in procs:
            go.put((start_at, start_at + MEASURE_S))
        results = [out.get(timeout=300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
        simulation.unlink_all(ring)
    total = sum(cpu for cpu, _ in results)
    led = [cpu for cpu, lead in results if lead]
    followed = [cpu for cpu, lead in results if not lead]
    return (
        total / MEASURE_S,
        sum(led) / MEASURE_S,
        sum(followed) / max(1, len(followed)) / MEASURE_S,
        len(led),
    )


def test_feedback_cpu_is_flat(benchmark, ring_name, capsys):
    """1, 4, 16, 64 coordinators: the host's feedback CPU stays flat."""
    figures: dict[tuple[int, bool], tuple[float, float, float, int]] = {}

    def run():
        for processes in (1, 4, 16, 64):
            figures[processes, False] = _measure(ring_name, processes, False)
        for processes in (1, 4, 16):  # 64 would take ~5 cores (the issue)
            figures[processes, True] = _measure(ring_name, processes, True)

    benchmark.pedantic(run, rounds=1)
    lines = [
        "| coordinator processes | feedback CPU in all (cores) | leader "
        "| each follower | before: every process recomputing | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for processes in (1, 4, 16, 64):
        now, leader, follower, leaders = figures[processes, False]
        assert leaders == 1
        before = figures.get((processes, True))
        old = "not run (~5 cores)" if before is None else f"{before[0]:.4f}"
        ratio = "" if before is None else f"{before[0] / now:.1f}x"
        lines.append(
            f"| {processes} | {now:.4f} | {leader:.4f} | {follower:.5f} "
            f"| {old} | {ratio} |"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    one, many = figures[1, False][0], figures[64, False][0]
    assert many < 4 * one + 0.01  # flat: not 64 times the work
    assert figures[16, False][0] * 5 < figures[16, True][0]
