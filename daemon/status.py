"""
How the daemon's health is told to people: the one-line ``STATUS=``
summary systemd shows, and the text of ``livemon-daemon status``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import psutil

from daemon import proc
from livemon import ipc
from livemon.config import Config
from livemon.ipc import read_status
from livemon.spill.drops import DROP_REASONS, drop_text


def health_columns(f: dict[str, Any]) -> dict[str, Any]:
    """The health row's drop and spill columns (migration 0007) of the
    figures ``f``: totals per reason, and per lane as JSON."""
    d = f["drops"]
    spill = f["spill"]
    return {
        "spilled": d["spilled"],
        **{f"dropped_{reason}": d[reason] for reason in DROP_REASONS},
        "spill_oldest_age_s": spill.get("oldest_age_s", 0.0),
        "lanes_json": json.dumps(
            {"drops": d["lanes"], "spill": spill.get("lanes", [])},
            separators=(",", ":"),
        ),
    }


def agent_health_columns(f: dict[str, Any]) -> dict[str, Any]:
    """The health row's agent-run columns (migration 0010) of the
    figures ``f``: runs drained, waiting in the ring and in spill, lost."""
    runs = f.get("agent_runs") or {}
    return {
        "agent_runs_drained": runs.get("drained", 0),
        "agent_runs_lag_records": runs.get("lag_records", 0),
        "agent_runs_spill_records": (runs.get("spill") or {}).get(
            "records", 0
        ),
        "agent_runs_lost": (runs.get("drops") or {}).get("lost", 0),
    }


FUTURE_TOLERANCE_S = 60.0
"""How far ahead of this clock a publishing time may be (a clock step)."""


def figures_of(status: Any, pid: int, now: float) -> dict[str, Any]:
    """The figures in ``status`` (the status file's JSON) of daemon ``pid``.

    Empty (so the daemon counts as hung) when they are no object, were
    published by another process, or carry no believable publishing time:
    a damaged file is no sign of life.
    """
    if not isinstance(status, dict) or status.get("pid") != pid:
        return {}
    published = status.get("published_at")
    if isinstance(published, bool) or not isinstance(published, int | float):
        return {}
    return status if published <= now + FUTURE_TOLERANCE_S else {}


def status_report(config: Config, hung_after_s: float) -> dict[str, Any]:
    """What ``livemon-daemon status`` tells: the daemon's process, its
    figures and their age, and its state: running, hung (no fresh
    figures), not running, or unknown (this user may not read the
    pidfile or the figures: nothing can be told)."""
    report: dict[str, Any] = {
        "running": False,
        "state": "not running",
        "ring": config.ring,
        "db": config.db,
        "pidfile": config.pidfile,
    }
    denied = _unreadable(config.pidfile)
    if denied is not None:
        return report | {"running": None, "state": "unknown", "error": denied}
    process = proc.Pidfile(config.pidfile).process()
    if process is None:
        return report
    try:
        with process.oneshot():
            report.update(
                running=True,
                pid=process.pid,
                uptime_s=round(time.time() - process.create_time(), 1),
                rss_bytes=process.memory_info().rss,
                cpu_percent=process.cpu_percent(interval=0.1),
                process_state=process.status(),
            )
    except psutil.NoSuchProcess:  # it exited just now
        return report | {"running": False}
    report.update(figures_of(read_status(config), process.pid, time.time()))
    published = report.get("published_at")
    age = None if published is None else time.time() - published
    report["figures_age_s"] = None if age is None else round(age, 1)
    hung = age is None or age > hung_after_s
    report["state"] = "hung" if hung else "running"
    denied = _unreadable(ipc.status_file(config))
    if denied is not None:
        report.update(state="unknown", error=denied)
    return report


def _unreadable(path: str) -> str | None:
    """Why this user may not read ``path`` (another's file), if so."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except PermissionError as exc:
        return permission_hint(exc)
    except OSError:
        pass
    return None


def permission_hint(exc: PermissionError) -> str:
    """One line for a file or ring this user may not open, and what to do."""
    what = str(exc.filename or f"an operation on a file ({exc})")
    if not os.path.exists(what) and os.path.exists("/dev/shm" + what):
        what = "/dev/shm" + what  # shm_open names a segment "/<ring>"
    owner = ""
    try:
        info = os.stat(what)
        owner = f", owned by uid {info.st_uid} gid {info.st_gid}, mode "
        owner += f"{info.st_mode & 0o777:04o}"
    except OSError:
        pass
    return (
        f"permission denied: {what}{owner}. Run as the user that owns it "
        "(the service runs as 'livemon': sudo -u livemon ...), or let "
        "your user in through the group (LIVEMON_GROUP, and add yourself "
        "to that group), or use your own --ring and --db"
    )


def status_line(f: dict[str, Any]) -> str:
    """The one-line summary of the figures (``STATUS=`` for systemd)."""
    trouble = f"; DB TROUBLE: {f['last_error']}" if f["last_error"] else ""
    if f["incident"] and f["incident"] != f["last_error"]:
        trouble += f"; {f['incident']}"
    for text in f["file_errors"]:
        trouble += f"; {text}"
    if f["quarantined_lanes"]:
        trouble += f"; QUARANTINED lanes {', '.join(f['quarantined_lanes'])}"
    if f["refused_claims"]:
        trouble += f"; {f['refused_claims']} lane claims REFUSED"
    trouble += sink_trouble(f.get("sinks") or [])
    trouble += _agent_trouble(f.get("agent_runs") or {})
    spilled = f["spill"].get("records", 0)
    reasons = drop_text(f.get("drops") or {})
    return (
        f"drained {f['drained']} ({f['drain_per_s']}/s), lag "
        f"{f['lag_records']}, dropped {f['dropped']}"
        + (f" ({reasons})" if reasons else "")
        + f", lanes "
        f"{f['lanes_in_use']}/{f['lanes']}"
        + (f", spill {spilled}" if spilled else "")
        + trouble
    )


def status_text(report: dict[str, Any]) -> str:
    """What ``livemon-daemon status`` prints for ``report``."""
    if report["running"] is None:
        return (
            f"livemon daemon: unknown (ring {report['ring']!r}, database "
            f"{report['db']}): {report['error']}"
        )
    if not report["running"]:
        return (
            f"livemon daemon: not running (ring {report['ring']!r}, "
            f"database {report['db']})"
        )
    fill = report.get("ring_fill") or [0.0]
    size = report.get("db_size_bytes")
    age = report.get("figures_age_s")
    shown_age = "none yet" if age is None else f"{age:.0f} s old"
    lines = [
        f"livemon daemon: {report['state']}, pid {report['pid']}, up "
        f"{report['uptime_s']:.0f} s, {report['rss_bytes'] / 2**20:.1f} MiB, "
        f"{report['cpu_percent']:.0f}% CPU, figures {shown_age}",
    ]
    if report["state"] == "unknown":
        lines.append(f"  UNKNOWN   cannot read its figures: {report['error']}")
    elif report["state"] == "hung":
        why = (
            "it is stopped (SIGSTOP): kill -CONT it"
            if report.get("process_state") == "stopped"
            else "it is stuck, or cannot write its status file: see its log"
        )
        lines.append(f"  HUNG      no figures published lately; {why}")
    lines += [
        f"  ring      {report['ring']!r}: lanes in use "
        f"{report.get('lanes_in_use', '?')}/{report.get('lanes', '?')}, "
        f"fill max {max(fill):.1%}, refused claims "
        f"{report.get('refused_claims', 0)}",
        f"  drained   {report.get('drained', 0)} "
        f"({report.get('drain_per_s', 0)}/s), lag "
        f"{report.get('lag_records', 0)}, dropped {report.get('dropped', 0)}",
        f"  database  {report['db']}"
        + (f" ({size / 2**20:.1f} MiB)" if size is not None else ""),
    ]
    lines += _spill_lines(report)
    lines += agent_lines(report.get("agent_runs"))
    lines += sink_lines(report.get("sinks") or [])
    lines += retention_lines(report.get("retention"))
    if report.get("metrics_error"):
        lines.append(f"  METRICS   {report['metrics_error']} (retrying)")
    elif report.get("metrics_url"):
        lines.append(f"  metrics   {report['metrics_url']}")
    if report.get("last_error"):
        lines.append(f"  TROUBLE   {report['last_error']} (retrying)")
    if report.get("incident") and report["incident"] != report.get(
        "last_error"
    ):
        lines.append(f"  INCIDENT  {report['incident']}")
    for text in report.get("file_errors") or []:
        lines.append(f"  FILES     {text} (retrying)")
    if report.get("quarantined_lanes"):
        lines.append(
            "  QUARANTINE lanes "
            + ", ".join(report["quarantined_lanes"])
            + " (cursors out of range: not read)"
        )
    if report.get("quarantined_records"):
        lines.append(
            f"  QUARANTINE {report['quarantined_records']} records set "
            f"aside in {report['db']}.quarantine.jsonl"
        )
    return "\n".join(lines)


MAX_LANES_SHOWN = 8


def _spill_lines(report: dict[str, Any]) -> list[str]:
    """Spill backlog and drops, in all and for the busiest lanes."""
    lines = []
    spill = report.get("spill") or {}
    if spill.get("records") or spill.get("bad_frames"):
        oldest = spill.get("oldest_age_s")
        lines.append(
            f"  spill     {spill.get('records', 0)} records, "
            f"{spill.get('size_bytes', 0) / 2**20:.1f} MiB to replay"
            + (f", oldest {oldest:.0f} s" if oldest is not None else "")
            + f", {spill.get('bad_frames', 0)} bad frames"
        )
        busiest = sorted(
            spill.get("lanes") or [], key=lambda lane: -lane["records"]
        )
        for lane in busiest[:MAX_LANES_SHOWN]:
            lines.append(
                f"            {lane['tree']} lane {lane['lane']} (epoch "
                f"{lane['epoch']:#x}): {lane['records']} records, "
                f"{lane['size_bytes'] / 2**20:.1f} MiB, oldest "
                f"{lane['oldest_age_s']:.0f} s"
            )
    drops_ = report.get("drops") or {}
    if drops_.get("refused"):
        lines.append(
            f"  full lanes refused {drops_['refused']}: spilled "
            f"{drops_['spilled']}, lost {drops_['lost']}"
            + (f" ({drop_text(drops_)})" if drops_["lost"] else "")
        )
        lossy = [lane for lane in drops_.get("lanes") or [] if lane["lost"]]
        for lane in lossy[:MAX_LANES_SHOWN]:
            lines.append(
                f"            lane {lane['lane']}: lost {lane['lost']} "
                f"({drop_text(lane)})"
            )
    return lines


# Agent runs: their own ring and spill (daemon/agent_runs.py).


def _agent_trouble(runs: dict[str, Any]) -> str:
    """The ``STATUS=`` line's part for agent runs lost or not read."""
    trouble = ""
    lost = (runs.get("drops") or {}).get("lost", 0)
    if lost:
        trouble += f"; {lost} agent runs LOST"
    if runs.get("ring_error"):
        trouble += f"; agents ring: {runs['ring_error']}"
    return trouble


def agent_lines(runs: dict[str, Any] | None) -> list[str]:
    """The status lines of the agent runs: drained, lag, spill, drops,
    and why their ring or spill cannot be read, if so."""
    if not runs:
        return []  # a daemon of the release before agent runs
    spill = runs.get("spill") or {}
    drops_ = runs.get("drops") or {}
    line = (
        f"  agents    drained {runs.get('drained', 0)}, lag "
        f"{runs.get('lag_records', 0)}, spill {spill.get('records', 0)} "
        f"records ({spill.get('size_bytes', 0) / 2**20:.1f} MiB), "
        f"replayed {runs.get('spill_replayed', 0)}"
    )
    if drops_.get("refused"):
        line += (
            f"; full lanes refused {drops_['refused']}: spilled "
            f"{drops_['spilled']}, lost {drops_['lost']}"
            + (f" ({drop_text(drops_)})" if drops_["lost"] else "")
        )
    lines = [line]
    if not runs.get("ring", True):
        why = runs.get("ring_error") or "not created yet"
        lines.append(f"  AGENTS    ring not drained: {why} (retrying)")
    if runs.get("spill_error"):
        lines.append(
            f"  AGENTS    spill replay: {runs['spill_error']} (retrying)"
        )
    return lines


# Destinations fed from the database (daemon/forward.py): lag, errors.


def sink_trouble(sinks: list[dict[str, Any]]) -> str:
    """The ``STATUS=`` line's part for destinations that fail now."""
    return "".join(
        f"; sink {s['sink']} FAILING ({s['lag_rows']} rows behind): "
        f"{s['last_error']}"
        for s in sinks
        if s.get("failures")
    )


def sink_lines(sinks: list[dict[str, Any]]) -> list[str]:
    """One status line per destination: lag, shipped, last error."""
    lines = []
    for s in sinks:
        line = (
            f"  sink      {s['sink']}: lag {s['lag_rows']} rows, "
            f"{s['lag_s']:.0f} s; shipped {s['shipped_rows']}"
        )
        if s.get("failures"):
            retry = s.get("retry_in_s")
            line += f"; FAILING x{s['failures']}: {s['last_error']}" + (
                f" (retry in {retry:.0f} s)" if retry is not None else ""
            )
        elif s.get("last_error"):
            line += f"; last error: {s['last_error']}"
        refused = {k: n for k, n in (s.get("refused") or {}).items() if n}
        if refused:
            line += "; refused and skipped: " + ", ".join(
                f"{n} {k}" for k, n in sorted(refused.items())
            )
        lines.append(line)
    return lines


# Retention: the daemon's pass at start, then hourly
# (daemon/retention_passes.py).


def retention_lines(block: dict[str, Any] | None) -> list[str]:
    """The status line of retention: running, or when the last pass
    finished (UTC) and when the next is due."""
    if not block:
        return []  # a daemon of the release before these figures
    line = f"  retention older than {block['older_than_days']:g} days: "
    if block.get("running"):
        return [line + "a pass is moving old rows now"]
    finished = block.get("last_pass_at")
    line += (
        "no pass finished yet"
        if finished is None
        else "last pass finished "
        + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(finished))
    )
    following = block.get("next_pass_in_s")
    if following is not None:
        line += f", next in {following:.0f} s"
    if block.get("last_error"):
        line += f"; FAILED: {block['last_error']}"
    return [line]
