"""
``livemon top``: a refreshing view of the daemon's health, the ring, the
cost of monitoring and the live routing figures.  Full screen on a
terminal (q or Ctrl-C quits); plain frames one after another otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from livemon import ipc
from livemon.config import Config
from livemon.db.reading import format_ns
from livemon.exceptions import MonitoringUnavailable
from livemon.spill.drops import drop_text, lane_drops
from livemon.views import render
from livemon.views.live import Snapshot, snapshot, stats_tables

STALE_STATUS_S = 5.0  # the daemon publishes every second
SPILL_LANES_SHOWN = 8  # lanes with a spill backlog or losses, at most
_SUMS = ("records", "size_bytes", "oldest_age_s")
_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def frame(
    config: Config, name: Callable[[Snapshot], Callable[[int], str]]
) -> list[str]:
    """The lines of one screen (``name`` gives a namer for a snapshot)."""
    now = time.time_ns()
    head = f"livemon top  ring {config.ring!r}  {format_ns(now)} UTC"
    try:
        snap = snapshot(config)
    except MonitoringUnavailable as exc:
        return [head, "", f"waiting: {exc}"]
    lines = [head, *_daemon_lines(config, snap.daemon), _ring_line(snap)]
    lines += _spill_lines(snap)
    p50, p99 = snap.overhead_ns
    lines.append(
        f"overhead  p50 {p50 / 1000:.1f} us  p99 {p99 / 1000:.1f} us per "
        f"request  (window {snap.stats.records:,} records)"
    )
    for table in stats_tables(snap, name(snap)):
        lines += ["", *render.titled(table).split("\n")]
    return lines


def _daemon_lines(config: Config, status: dict[str, Any] | None) -> list[str]:
    """The daemon's own lines: itself, its agent runs, its destinations.

    The status file is the daemon's, but any process of the user may
    write there: figures of another shape say so in a line, never a
    traceback in ``top``.
    """
    try:
        return [
            _daemon_line(config, status),
            *_agents_line(status),
            *sink_lines(status),
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [
            f"daemon    status file {ipc.status_file(config)} holds no "
            f"figures of this livemon ({type(exc).__name__}: {exc})"
        ]


def _daemon_line(config: Config, status: dict[str, Any] | None) -> str:
    if status is None:
        return "daemon    not running: records wait in the ring (or drop)"
    try:
        age_s = time.time() - os.stat(ipc.status_file(config)).st_mtime
    except FileNotFoundError:
        age_s = 0.0
    if age_s > STALE_STATUS_S:
        return (
            f"daemon    pid {status['pid']} silent for {age_s:.0f} s "
            "(killed or hung?)"
        )
    size = status.get("db_size_bytes") or 0
    up_s = int(time.time() - status.get("started_at", time.time()))
    lanes = status.get("quarantined_lanes") or []
    problems = [
        status.get("last_error"),
        status.get("incident"),
        *(status.get("file_errors") or {}).values(),
        *(f"quarantined lane {q}" for q in lanes),
    ]
    trouble = "; ".join(dict.fromkeys(p for p in problems if p))
    spill = status.get("spill") or {}
    spilled = (
        f"  spill {spill['records']:,} ({spill.get('oldest_age_s') or 0:.0f}"
        " s old)"
        if spill.get("records")
        else ""
    )
    return (
        f"daemon    pid {status['pid']}  up {up_s // 3600}h"
        f"{up_s % 3600 // 60:02d}m  drained {status['drained']:,} "
        f"({status['drain_per_s']:,.0f}/s)  lag {status['lag_records']:,}  "
        f"dropped {status['dropped']:,}  db {size / 2**20:,.1f} MiB"
        + spilled
        + (f"  TROUBLE: {trouble}" if trouble else "")
    )


def _ring_line(snap: Snapshot) -> str:
    cap = snap.capacity_records
    fills = [min(max(s.pending, 0), cap) / cap for s in snap.lanes]
    in_use = sum(s.owned for s in snap.lanes)
    drops = lane_drops(snap.lanes)
    reasons = drop_text(drops)
    return (
        f"ring      lanes {in_use}/{len(fills)} in use  fill "
        f"[{render.bars(fills)}] max {max(fills):.1%}  spilled "
        f"{drops['spilled']:,}  dropped {drops['lost']:,}"
        + (f" ({reasons})" if reasons else "")
        + (
            f"  REFUSED {snap.refused_claims:,} claims (more processes "
            "than lanes)"
            if snap.refused_claims
            else ""
        )
    )


def _agents_line(status: dict[str, Any] | None) -> list[str]:
    """The daemon's agent-run figures (none from a daemon without them)."""
    runs = (status or {}).get("agent_runs")
    if not runs:
        return []
    spill = runs.get("spill") or {}
    waiting = spill.get("records") or 0
    return [
        f"agents    runs drained {runs.get('drained', 0):,}  lag "
        f"{runs.get('lag_records', 0):,}"
        + (f"  spill {waiting:,}" if waiting else "")
        + ("" if runs.get("ring") else "  (agents ring not open)")
    ]


def _spill_lines(snap: Snapshot) -> list[str]:
    """Per lane: the spill backlog (from the daemon's status) and the
    records lost (from the lane headers, live), busiest lanes first."""
    status = snap.daemon or {}
    backlog: dict[int, dict[str, float]] = {}
    for got in (status.get("spill") or {}).get("lanes") or []:
        if got.get("tree") == "events" and got.get("records"):
            # The lane's segments of every epoch (a regrown ring's too).
            into = backlog.setdefault(got["lane"], dict.fromkeys(_SUMS, 0))
            for key in ("records", "size_bytes"):
                into[key] += got[key]
            into["oldest_age_s"] = max(
                into["oldest_age_s"], got["oldest_age_s"]
            )
    lost = {
        lane["lane"]: lane
        for lane in lane_drops(snap.lanes)["lanes"]
        if lane["lost"]
    }
    lines = []
    for lane in sorted(
        backlog.keys() | lost.keys(),
        key=lambda n: -backlog.get(n, {}).get("records", 0),
    )[:SPILL_LANES_SHOWN]:
        text = f"  lane {lane:<4}"
        if lane in backlog:
            got = backlog[lane]
            text += (
                f" spill {got['records']:,} records "
                f"{got['size_bytes'] / 2**20:,.1f} MiB, oldest "
                f"{got['oldest_age_s']:.0f} s"
            )
        if lane in lost:
            text += f"  LOST {lost[lane]['lost']:,} ({drop_text(lost[lane])})"
        lines.append(text)
    return lines


def run(
    config: Config,
    name: Callable[[Snapshot], Callable[[int], str]],
    interval_s: float,
    iterations: int | None,
    out: TextIO | None = None,
) -> None:
    """Refresh until q, Ctrl-C or ``iterations`` frames (on stdout)."""
    out = out or sys.stdout
    interactive = out.isatty() and sys.stdin.isatty()
    with contextlib.suppress(KeyboardInterrupt), _screen(out, interactive):
        for count in itertools.count(1):
            lines = frame(config, name)
            if interactive:
                _draw(out, lines)
            else:
                out.write("\n".join(lines) + "\n\n")
                out.flush()
            if count == iterations or _wait_for_quit(interval_s, interactive):
                break


def _draw(out: TextIO, lines: list[str]) -> None:
    width, height = shutil.get_terminal_size()
    shown = [line[:width] for line in lines[:height]]
    out.write(_HOME + f"{_CLEAR_LINE}\n".join(shown) + _CLEAR_LINE)
    out.write(_CLEAR_BELOW)
    out.flush()


def _wait_for_quit(interval_s: float, interactive: bool) -> bool:
    """Sleep ``interval_s``; True if q was pressed meanwhile."""
    if not interactive:
        time.sleep(interval_s)
        return False
    deadline = time.monotonic() + interval_s
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and os.read(sys.stdin.fileno(), 32).lower().count(b"q"):
            return True
    return False


@contextlib.contextmanager
def _screen(out: TextIO, interactive: bool) -> Iterator[None]:
    """Full screen with keys read one by one; restored however we leave."""
    if not interactive:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out.write(_ENTER)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write(_LEAVE)
        out.flush()


def sink_lines(status: dict[str, Any] | None) -> list[str]:
    """One line per destination the daemon ships to: lag, last error."""
    lines = []
    for sink in (status or {}).get("sinks") or []:
        line = (
            f"sink      {sink['sink']}  lag {sink['lag_rows']:,} rows "
            f"{sink['lag_s']:,.0f} s  shipped {sink['shipped_rows']:,}"
        )
        if sink.get("failures"):
            line += f"  FAILING: {sink['last_error']}"
        lines.append(line)
    return lines
