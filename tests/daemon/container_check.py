"""
Run inside a container booted with systemd as PID 1 (see
test_systemd_boot.py): drive the shipped unit with systemctl, with real
coordinators, and write what was seen as JSON; then power off.

Usage: python container_check.py RESULT.json
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

UNIT = "livemon-daemon"
DB = "/var/lib/livemon/unified_monitoring.db"
PYTHON = sys.executable
RESULT: dict[str, dict[str, object]] = {"checks": {}, "timings_s": {}}


def sh(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, **kwargs
    )


def coordinator(requests: int, seed: int) -> subprocess.Popen[str]:
    """A demo coordinator, run as the service's user (see the report on
    ring ownership: a root coordinator's ring is root's)."""
    return subprocess.Popen(
        [
            "runuser",
            "-u",
            "livemon",
            "--",
            PYTHON,
            "-m",
            "livemon.demo",
            "--requests",
            str(requests),
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )


def recorded(processes: list[subprocess.Popen[str]]) -> tuple[int, int]:
    """Wait for coordinators; their records stored and dropped."""
    stored = dropped = 0
    for process in processes:
        out, _ = process.communicate(timeout=300)
        counters = json.loads(out)
        stored += counters["recorded"]
        dropped += counters["dropped"]
    return stored, dropped


def count(sql: str = "SELECT count(*) FROM events") -> int:
    """One number from the service's database (-1 before it exists)."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=5)
        ) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return -1


def main_pid() -> int:
    """The unit's main pid (0 while it has none)."""
    out = sh("systemctl", "show", "-p", "MainPID", "--value", UNIT).stdout
    return int(out.strip() or 0)


def active() -> bool:
    """Whether the unit is active (running and ready)."""
    return sh("systemctl", "is-active", UNIT).stdout.strip() == "active"


def wait(predicate, timeout_s: float = 60.0) -> float:
    """Poll until ``predicate``; return the seconds it took (or raise)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"waited {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def check(name: str, ok: bool, detail: object = None) -> None:
    """Record one check's verdict."""
    RESULT["checks"][name] = {"ok": bool(ok), "detail": detail}


def steady_load(seconds: float, first_seed: int) -> list[int]:
    """Start a small coordinator every 0.3 s for ``seconds`` (a load that
    a restart of ~2.5 s does not overflow); return [stored, dropped]."""
    totals = [0, 0]

    def run() -> None:
        started = time.monotonic()
        seed = first_seed
        processes = []
        while time.monotonic() - started < seconds:
            processes.append(coordinator(300, seed))
            seed += 1
            time.sleep(0.3)
        stored, dropped = recorded(processes)
        totals[0] += stored
        totals[1] += dropped

    thread = threading.Thread(target=run)
    thread.start()
    load_threads.append(thread)
    return totals


load_threads: list[threading.Thread] = []


def checks() -> None:
    total = 0
    # 1. A coordinator before the daemon: it creates the ring.
    stored, _ = recorded([coordinator(3000, 0)])
    total += stored
    started = time.monotonic()
    start = sh("systemctl", "start", UNIT)
    RESULT["timings_s"]["systemctl_start"] = round(
        time.monotonic() - started, 2
    )
    check("unit_starts", start.returncode == 0 and active(), start.stderr)
    wait(lambda: count() == total)
    check("coordinator_before_daemon_drained", count() == total, total)
    # 2. A coordinator after the daemon.
    stored, _ = recorded([coordinator(3000, 1)])
    total += stored
    wait(lambda: count() == total)
    check("coordinator_after_daemon_drained", count() == total, total)
    # 3. A root shell finds the service without flags.
    status = sh("/usr/local/bin/livemon-daemon", "status")
    check(
        "root_status_finds_service",
        status.returncode == 0 and "running" in status.stdout,
        status.stdout + status.stderr,
    )
    report = sh("/usr/local/bin/livemon", "report", "--since", "1h")
    check(
        "root_report_finds_service",
        report.returncode == 0 and "/var/lib/livemon" in report.stdout,
        report.stdout[-300:] + report.stderr[-300:],
    )
    # 4. SIGKILL mid-stream: restarted, nothing lost or duplicated.
    load = steady_load(6.0, 100)
    wait(lambda: count() > total + 500)
    killed = main_pid()
    sh("systemctl", "kill", "-s", "KILL", UNIT)
    back = wait(lambda: main_pid() not in (0, killed) and active())
    RESULT["timings_s"]["sigkill_to_active_again"] = round(back, 2)
    for thread in load_threads:
        thread.join()
    load_threads.clear()
    total += load[0]
    wait(lambda: count() == total)
    duplicates = count(
        "SELECT count(*) - count(DISTINCT epoch || '/' || lane || '/' || seq)"
        " FROM events"
    )
    check(
        "sigkill_restarted_nothing_lost",
        count() == total and duplicates == 0 and load[1] == 0,
        {"total": total, "duplicates": duplicates, "dropped": load[1]},
    )
    # 5. SIGSTOP: status calls it hung, the watchdog restarts it.
    stopped = main_pid()
    sh("systemctl", "kill", "-s", "STOP", UNIT)
    hung_at = time.monotonic()
    time.sleep(2.5)
    hung = sh("/usr/local/bin/livemon-daemon", "status", "--hung-after", "2")
    check(
        "status_calls_sigstopped_daemon_hung",
        hung.returncode == 4 and "hung" in hung.stdout,
        hung.stdout,
    )
    wait(lambda: main_pid() not in (0, stopped) and active(), 90)
    RESULT["timings_s"]["sigstop_to_active_again"] = round(
        time.monotonic() - hung_at, 2
    )
    journal = sh("journalctl", "-u", UNIT, "--no-pager", "-o", "cat").stdout
    stored, _ = recorded([coordinator(2000, 2)])
    total += stored
    wait(lambda: count() == total)
    check(
        "sigstop_caught_by_watchdog",
        "Watchdog timeout" in journal and count() == total,
        [line for line in journal.splitlines() if "atchdog" in line][-3:],
    )
    # 6. systemctl stop drains everything; the ring outlives the daemon.
    stored, _ = recorded([coordinator(5000, 3), coordinator(5000, 4)])
    total += stored
    started = time.monotonic()
    stop = sh("systemctl", "stop", UNIT)
    RESULT["timings_s"]["systemctl_stop"] = round(
        time.monotonic() - started, 2
    )
    check(
        "stop_drains_everything",
        stop.returncode == 0 and count() == total,
        {"total": total, "stored": count()},
    )
    check("ring_survives_stop", os.path.exists("/dev/shm/livemon"))
    stored, _ = recorded([coordinator(2000, 5)])  # while it is stopped
    total += stored
    sh("systemctl", "start", UNIT)
    wait(lambda: count() == total)
    check("coordinator_while_stopped_drained", count() == total, total)
    restarts = sh("systemctl", "show", "-p", "NRestarts", "--value", UNIT)
    RESULT["restarts"] = {"n": restarts.stdout.strip()}  # type: ignore[assignment]
    sh("systemctl", "stop", UNIT)


def main() -> None:
    try:
        checks()
    except Exception:  # the report must be written whatever failed
        RESULT["error"] = {"traceback": traceback.format_exc()}
    finally:
        RESULT["journal"] = {
            "tail": sh(
                "journalctl", "-u", UNIT, "--no-pager", "-n", "60"
            ).stdout.splitlines()
        }
        with open(sys.argv[1], "w") as file:
            json.dump(RESULT, file, indent=2)
        subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)


if __name__ == "__main__":
    main()
