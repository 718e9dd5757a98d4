"""
Live per-agent figures from each agent's own runs in the agents ring (for
``livemon top`` and ``livemon stats``): success with its Wilson bounds and
latency over each agent's newest runs, cancelled runs censored.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from livemon.feedback.stats import wilson
from livemon.record import AgentOutcome

_CANCELLED = int(AgentOutcome.CANCELLED)


@dataclasses.dataclass(frozen=True)
class RunFigures:
    """One agent's newest runs in the window (cancelled ones apart)."""

    agent: int
    runs: int  # not cancelled
    success_rate: float
    success_low: float
    success_high: float
    p50_ms: float
    p95_ms: float
    cancelled: int


def run_figures(
    runs: npt.NDArray[np.void], recent: int
) -> dict[int, RunFigures]:
    """Per agent (label id), figures of its ``recent`` newest runs.

    Args:
        runs: AGENT_RUN_DTYPE[n], any order (a window of the ring).
        recent: how many of each agent's newest runs count.
    """
    found = {}
    runs = runs[np.argsort(runs["timestamp_ns"], kind="stable")]
    for agent in np.unique(runs["agent"]).tolist():
        if agent == 0:
            continue
        mine = runs[runs["agent"] == agent]
        cancelled = mine["outcome"] == _CANCELLED
        kept = mine[~cancelled][-recent:]
        known = kept["success"] >= 0
        ok = int((kept["success"] == 1).sum())
        bounds = wilson(np.array([ok]), np.array([int(known.sum())]))
        low, high = float(bounds[0][0]), float(bounds[1][0])
        times = kept["execution_time_ms"]
        times = times[~np.isnan(times)]
        p50, p95 = (
            np.percentile(times, [50, 95]).tolist()
            if len(times)
            else (math.nan, math.nan)
        )
        found[agent] = RunFigures(
            agent,
            len(kept),
            ok / int(known.sum()) if known.any() else math.nan,
            low,
            high,
            p50,
            p95,
            int(cancelled.sum()),
        )
    return found
