"""
How the daemon's health is told to people: the one-line ``STATUS=``
summary systemd shows, and the text of ``livemon-daemon status``.
"""

from __future__ import annotations

from typing import Any


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
    spilled = f["spill"].get("records", 0)
    return (
        f"drained {f['drained']} ({f['drain_per_s']}/s), lag "
        f"{f['lag_records']}, dropped {f['dropped']}, lanes "
        f"{f['lanes_in_use']}/{f['lanes']}"
        + (f", spill {spilled}" if spilled else "")
        + trouble
    )


def status_text(report: dict[str, Any]) -> str:
    """What ``livemon-daemon status`` prints for ``report``."""
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
    if report["state"] == "hung":
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
    spill = report.get("spill") or {}
    if spill.get("records") or spill.get("bad_frames"):
        oldest = spill.get("oldest_age_s")
        lines.append(
            f"  spill     {spill.get('records', 0)} records, "
            f"{spill.get('size_bytes', 0) / 2**20:.1f} MiB to replay"
            + (f", oldest {oldest:.0f} s" if oldest is not None else "")
            + f", {spill.get('bad_frames', 0)} bad frames"
        )
    lines += sink_lines(report.get("sinks") or [])
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
        lines.append(line)
    return lines
