"""
The README's main job: start the daemon, run several independent
coordinator processes against it, stop it, and show what landed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable

from daemon import proc
from daemon.exceptions import NotRunning
from livemon.config import Config

_SUMMARY = """
SELECT count(*), sum(success = 1), avg(execution_time_ms),
       avg(quality_score), sum(accepted = 0)
FROM monitoring_events
"""
_PER_AGENT = """
SELECT json_each.value AS agent, count(*) AS requests,
       round(avg(success), 3) AS success_rate
FROM monitoring_events, json_each(monitoring_events.actual_agents)
GROUP BY agent ORDER BY requests DESC
"""
_AGENT_RUNS = """
SELECT agent, count(*), avg(success), avg(execution_time_ms),
       sum(outcome = 'discarded')
FROM agent_runs_view GROUP BY agent ORDER BY count(*) DESC
"""


def run(
    config: Config,
    daemon_argv: list[str],
    coordinators: int,
    requests: int,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the demo; raise DaemonError subclasses on failure."""
    started = proc.Pidfile(config.pidfile).process() is None
    if started:
        daemon = proc.start_detached(config, daemon_argv)
        echo(f"started livemon daemon (pid {daemon.pid}), db {config.db}")
    workers = start_coordinators(coordinators, requests, ring=config.ring)
    sent = 0
    dropped = 0
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        counters = json.loads(out)
        sent += counters["recorded"]
        dropped += counters["dropped"] + counters["unavailable"]
    echo(
        f"{coordinators} coordinator processes recorded {sent} requests "
        f"({dropped} dropped)"
    )
    if started:
        with contextlib.suppress(NotRunning):  # it died: nothing to stop
            proc.stop(config)
        proc.unlink_rings(config)
        echo("stopped the daemon after its final drain, removed the ring")
    show(config.db, echo)
    echo(
        f"\nlook closer: livemon report --db {config.db} --since 1h"
        f"\n             livemon tail --db {config.db} --agent coder"
    )


def start_coordinators(
    count: int,
    requests: int,
    *,
    ring: str | None = None,
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start ``count`` independent coordinator processes (livemon.demo),
    seeded 0..count-1; each prints its counters as JSON when done."""
    ring_args = ["--ring", ring] if ring else []
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livemon.demo",
                *ring_args,
                "--requests",
                str(requests),
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(count)
    ]


def show(db_path: str, echo: Callable[[str], None] = print) -> None:
    """Print what the database holds, through the seed's view."""
    with contextlib.closing(
        sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    ) as db:
        total, ok, ms, quality, overrides = db.execute(_SUMMARY).fetchone()
        echo(f"\n{db_path}: {total} requests in monitoring_events")
        if not total:
            return
        echo(
            f"  success {ok / total:.1%}, mean execution {ms:.0f} ms, "
            f"mean quality {quality:.3f}, overrides {overrides}"
        )
        echo("  per agent:")
        for agent, count, rate in db.execute(_PER_AGENT):
            echo(f"    {agent:<18} {count:>7} requests, success {rate:.1%}")
        echo("  agent runs (each agent's own, from agent_runs_view):")
        for agent, runs, rate, ms, discarded in db.execute(_AGENT_RUNS):
            echo(
                f"    {agent:<18} {runs:>7} runs, success {rate:.1%}, "
                f"mean {ms:.0f} ms, {discarded} discarded"
            )
        row = db.execute(
            "SELECT * FROM monitoring_events ORDER BY id DESC LIMIT 1"
        )
        names = [d[0] for d in row.description]
        echo("  latest row:")
        for name, value in zip(names, row.fetchone(), strict=True):
            echo(f"    {name:<18} {value}")
