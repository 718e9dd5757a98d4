"""
The daemon's figures, assembled from its parts: the status it publishes
each second (drain, rings, spill, destinations, agent runs), the
``health`` row it appends from them now and then, and the Prometheus
endpoint that serves them when configured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ringbuf
from daemon import agent_runs
from daemon.drain import Drainer
from daemon.replay import SpillReplayer
from daemon.status import agent_health_columns, health_columns
from daemon.store import Store
from livemon import ipc
from livemon.config import Config
from livemon.exceptions import ConfigError
from livemon.spill.drops import lane_drops

if TYPE_CHECKING:  # imported at run time only when configured
    from daemon.metrics import MetricsServer


def daemon_figures(
    config: Config,
    drainer: Drainer,
    *,
    started: float,
    rate: float,
    file_errors: dict[str, str],
    replayer: SpillReplayer,
    agent_replayer: agent_runs.AgentSpillReplayer,
    sinks: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything ``status`` shows, as published in the status file.

    Args:
        started: when the daemon started (Unix seconds).
        rate: records drained per second, lately.
        file_errors: files beside the database that could not be written.
        sinks: each destination's figures (``Forwarding.figures``).
    """
    lanes = drainer.lanes()
    capacity = drainer.events.capacity_records
    fill = [
        round(min(max(s.pending, 0), capacity) / capacity, 4) for s in lanes
    ]
    drops = lane_drops(lanes)  # refused by full lanes: spilled or lost
    return {
        "pid": os.getpid(),
        "ring": config.ring,
        "db": config.db,
        "started_at": started,
        "drained": drainer.drained,
        "drain_per_s": round(rate, 1),
        "dropped": drops["lost"],
        "drops": drops,
        "lag_records": sum(min(max(s.pending, 0), capacity) for s in lanes),
        "lanes_in_use": sum(s.owned for s in lanes),
        "lanes": len(lanes),
        "ring_fill": fill,
        "batch_latency_ms": drainer.batch_latency_ms,
        "db_size_bytes": drainer.store.size_bytes() if drainer.store else None,
        "last_error": drainer.last_error,
        "file_errors": sorted(file_errors.values()),
        "incident": drainer.incident,
        "incident_at": drainer.incident_at,
        "quarantined_lanes": drainer.quarantine.describe(),
        "quarantined_records": drainer.quarantine.records,
        "failures": drainer.failures,
        "refused_claims": drainer.events.refused_claims,
        "spill": replayer.backlog(),
        "spill_replayed": replayer.replayed,
        "spill_error": replayer.last_error,
        "sinks": sinks,
        "agent_runs": agent_figures(config, drainer, agent_replayer),
    }


def agent_figures(
    config: Config,
    drainer: Drainer,
    replayer: agent_runs.AgentSpillReplayer,
) -> dict[str, Any]:
    """The agents ring's and spill's figures, for status."""
    ring, lag = drainer.agents, 0
    states: list[ringbuf.LaneState] = []
    if ring is not None:
        states = [ring.lane_state(i) for i in range(ring.lanes)]
        lag = sum(
            min(max(s.pending, 0), ring.capacity_records) for s in states
        )
    return {
        "drained": drainer.agent_runs_drained,
        "lag_records": lag,
        "ring": ring is not None,
        "ring_error": agent_runs.LAST_OPEN_ERROR.get(
            ipc.agents_ring(config).name
        ),
        "spill_replayed": replayer.replayed,
        "spill": replayer.backlog(),
        "spill_error": replayer.last_error,
        "drops": lane_drops(states),  # spilled, or lost per reason
    }


def retention_figures(
    config: Config,
    *,
    running: bool,
    last_pass_at: float | None,
    next_pass_in_s: float,
    last_error: str | None = None,
) -> dict[str, Any]:
    """Retention's figures, for status: whether a pass runs, when the
    last one finished and when the next is due.

    An operator reads here whether the daemon has moved old rows since it
    started (its first pass runs at start, then hourly), before running
    or judging ``livemon-daemon retain``.

    Args:
        last_pass_at: when the last pass finished (Unix seconds), None
            before the first.
        next_pass_in_s: until the next pass is due (negative: due now).
        last_error: why the last try failed (the archive side), if it did.
    """
    return {
        "older_than_days": config.retention_days,
        "running": running,
        "last_pass_at": last_pass_at,
        "next_pass_in_s": None
        if running
        else round(max(next_pass_in_s, 0.0), 1),
        "last_error": last_error,
    }


def health_row(
    f: dict[str, Any], store: Store, timestamp_ns: int
) -> dict[str, Any]:
    """The ``health`` row (column -> value) of the figures ``f``."""
    return dict(
        timestamp_ns=timestamp_ns,
        drained=f["drained"],
        dropped=f["dropped"],
        lanes_in_use=f["lanes_in_use"],
        ring_fill_max=max(f["ring_fill"]),
        ring_fill_json=json.dumps(f["ring_fill"]),
        lag_records=f["lag_records"],
        drain_per_s=f["drain_per_s"],
        batch_latency_ms=f["batch_latency_ms"],
        db_size_bytes=store.size_bytes(),
        refused_claims=f["refused_claims"],
        spill_records=f["spill"].get("records", 0),
        spill_bytes=f["spill"].get("size_bytes", 0),
        **health_columns(f),
        **agent_health_columns(f),
        last_error="; ".join(
            [t for t in (f["last_error"], f["incident"]) if t]
            + f["file_errors"]
            + [f"quarantined lane {q}" for q in f["quarantined_lanes"]]
        )
        or None,
    )


def metrics_server(
    config: Config, figures: Callable[[], Any]
) -> MetricsServer | None:
    """The Prometheus endpoint when ``metrics_address`` is set, else None.

    prometheus_client is the optional ``metrics`` extra: it is imported
    only then, so the daemon runs without it.

    Raises:
        ConfigError: a bad address, or the extra is not installed.
    """
    if not config.metrics_address:
        return None
    try:
        from daemon import metrics
    except ImportError as exc:
        raise ConfigError(
            "metrics_address is set but prometheus_client is missing: "
            "pip install 'livemon[metrics]'"
        ) from exc
    return metrics.server_for(config, figures)
