"""
The chaos soak: real producer processes recording through the Monitor
while the daemon and the producers are SIGKILLed and SIGSTOPped at random,
the database's filesystem turns read-only and full for periods, and the
daemon stays away for outages; then every request each producer reported
is reconciled against the database, one by one.

Run ``python -m bench.chaos chaos|outage|burst`` (as root: it mounts a
tmpfs for the database), or the stress tests in tests/daemon/test_chaos.py.
Durations and rates come from ``LIVEMON_CHAOS_*`` (see ``Plan.from_env``).
It prints a table: sent, stored, dropped per reason, lost, duplicated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ringbuf
from bench import chaos_reconcile
from bench.chaos_reconcile import Result

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACTIONS = (
    "kill_daemon",
    "stop_daemon",
    "kill_producer",
    "stop_producer",
    "read_only_db",
    "full_db",
)


@dataclasses.dataclass
class Plan:
    """One soak: what runs, for how long, and what goes wrong."""

    mode: str = "chaos"
    producers: int = 8
    rate: float = 250.0  # requests/s each; 0: full speed
    total: int = 0  # requests each, 0: until the run ends
    duration_s: float = 60.0
    outage_s: float = 0.0  # the daemon away this long, from the start
    chaos_every_s: float = 2.0  # 0: no chaos
    capacity_records: int = 1024  # per ring lane: small, so outages spill
    db_mount: str = "256m"  # a tmpfs for the database ("" for none)
    texts: int = 1  # 1: an error text of its own per request (labels spill)
    seed: int = 1
    catch_up_s: float = 600.0

    @classmethod
    def from_env(cls, mode: str) -> Plan:
        """The plan of ``mode``, with ``LIVEMON_CHAOS_<FIELD>`` overrides."""
        plans = {
            "chaos": cls(),
            "outage": cls(
                mode="outage",
                producers=4,
                rate=1000.0,
                outage_s=60.0,
                chaos_every_s=0.0,
                capacity_records=16384,
                db_mount="",
            ),
            "burst": cls(
                mode="burst",
                producers=1,
                rate=0.0,
                total=1_000_000,
                chaos_every_s=0.0,
                capacity_records=16384,
                db_mount="",
            ),
        }
        plan = plans[mode]
        for field in dataclasses.fields(cls):
            raw = os.environ.get(f"LIVEMON_CHAOS_{field.name.upper()}")
            if raw is not None and field.name != "mode":
                kind = type(getattr(plan, field.name))
                setattr(plan, field.name, kind(raw))
        if mode == "outage" and "LIVEMON_CHAOS_DURATION_S" not in os.environ:
            plan.duration_s = plan.outage_s + 30.0  # on after it returns
        return plan


class Soak:
    """Runs a ``Plan`` in a scratch directory; ``run()`` reconciles."""

    def __init__(self, plan: Plan, workdir: pathlib.Path) -> None:
        self.plan = plan
        self.dir = workdir
        self.rng = random.Random(plan.seed)
        self.ring = f"lmchaos-{uuid.uuid4().hex[:10]}"
        state = workdir / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.db_dir = workdir / "db"
        self.db_dir.mkdir(exist_ok=True)
        self.stop_flag = workdir / "stop"
        self.env = dict(
            os.environ,
            LIVEMON_RING=self.ring,
            LIVEMON_DB=str(self.db_dir / "chaos.db"),
            LIVEMON_PIDFILE=str(state / "daemon.pid"),
            LIVEMON_SPILL_DIR=str(workdir / "spill"),
            LIVEMON_CAPACITY_RECORDS=str(plan.capacity_records),
            LIVEMON_BATCH_INTERVAL_S="0.05",
            # Room kept free scaled to the database's small tmpfs.
            LIVEMON_DB_MIN_FREE_BYTES=str(32 * 2**20),
            LIVEMON_HEALTH_INTERVAL_S="5",
            LIVEMON_LOG_FILE=str(workdir / "daemon.log"),
            PYTHONPATH=str(ROOT),
        )
        self.daemon: subprocess.Popen[bytes] | None = None
        self.producers: list[subprocess.Popen[bytes] | None] = []
        self.progress: list[pathlib.Path] = []
        self.stopped: dict[int, float] = {}  # pid -> when to SIGCONT
        self.events = dict.fromkeys(ACTIONS, 0)
        self.peak_spill = 0
        self.returned_at: float | None = None  # the daemon, after an outage
        self.cleared_s: float | None = None  # its spill backlog gone since

    # -- processes -------------------------------------------------------

    def start_daemon(self) -> None:
        """Start a daemon if none runs."""
        if self.daemon is not None and self.daemon.poll() is None:
            return
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "daemon", "start", "--foreground"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_daemon(self) -> None:
        """SIGKILL the daemon (SIGCONT first: a stopped one dies too)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
            self.stopped.pop(self.daemon.pid, None)

    def start_producer(self, slot: int) -> None:
        """A new producer in ``slot``, with its own progress file."""
        plan = self.plan
        path = self.dir / f"progress-{len(self.progress):04d}"
        self.progress.append(path)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.chaos_producer",
                str(path),
                str(plan.rate),
                str(plan.total),
                str(self.stop_flag),
                str(plan.texts),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        if slot < len(self.producers):
            self.producers[slot] = process
        else:
            self.producers.append(process)

    # -- chaos -----------------------------------------------------------

    def chaos(self) -> None:
        """One random misfortune."""
        action = self.rng.choice(ACTIONS)
        self.events[action] += 1
        getattr(self, "_" + action)()

    def _kill_daemon(self) -> None:
        self.kill_daemon()
        time.sleep(self.rng.uniform(0, 3))
        self.start_daemon()

    def _stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self._stop(self.daemon.pid, self.rng.uniform(1, 5))

    def _kill_producer(self) -> None:
        slot = self.rng.randrange(len(self.producers))
        process = self.producers[slot]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
            self.stopped.pop(process.pid, None)
            self.start_producer(slot)

    def _stop_producer(self) -> None:
        process = self.rng.choice(self.producers)
        if process is not None and process.poll() is None:
            self._stop(process.pid, self.rng.uniform(0.5, 3))

    def _stop(self, pid: int, for_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            self.stopped[pid] = time.monotonic() + for_s

    def _read_only_db(self) -> None:
        # Remounting read-only needs no file open for writing on it: the
        # daemon is killed first (as a crash would leave it), restarted on
        # the read-only database, and finds it writable again later.
        if not self.plan.db_mount:
            return
        self.kill_daemon()
        _mount("remount,ro", self.db_dir)
        self.start_daemon()
        time.sleep(self.rng.uniform(2, 6))
        _mount("remount,rw", self.db_dir)

    def _full_db(self) -> None:
        if not self.plan.db_mount:
            return
        filler = self.db_dir / "filler"
        with (
            open(filler, "wb", buffering=0) as file,
            contextlib.suppress(OSError),
        ):
            while True:
                file.write(b"\xa5" * 2**16)
        time.sleep(self.rng.uniform(2, 6))
        filler.unlink()

    def wake_due(self, all_now: bool = False) -> None:
        """SIGCONT what was stopped long enough (or everything)."""
        now = time.monotonic()
        for pid, at in list(self.stopped.items()):
            if all_now or now >= at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                del self.stopped[pid]

    # -- the run ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The daemon's last published figures ({} if none)."""
        try:
            with open(self.env["LIVEMON_PIDFILE"] + ".status.json") as f:
                figures: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return {}
        backlog = (figures.get("spill") or {}).get("records", 0)
        self.peak_spill = max(self.peak_spill, backlog)
        daemon_pid = getattr(self.daemon, "pid", None)
        if (
            self.returned_at is not None
            and self.cleared_s is None
            and figures.get("pid") == daemon_pid
            and figures.get("ready")
            and not backlog
        ):
            self.cleared_s = time.monotonic() - self.returned_at
        return figures

    def run(self) -> Result:
        """Soak, stop the producers, let the daemon catch up, reconcile."""
        plan = self.plan
        started = time.monotonic()
        if not plan.outage_s:
            self.start_daemon()
            time.sleep(1.0)  # the rings exist before the producers
        for slot in range(plan.producers):
            self.start_producer(slot)
        self._soak(started)
        self.wake_due(all_now=True)
        self.stop_flag.touch()
        for process in self.producers:
            if process is not None:
                process.wait(timeout=max(600.0, plan.catch_up_s))
        soaked = time.monotonic() - started
        self.start_daemon()
        caught_up = self._catch_up()
        figures = self.status()  # before the stop removes the file
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=120)
        result = chaos_reconcile.reconcile(
            self.env["LIVEMON_DB"], self.progress
        )
        return dataclasses.replace(
            result,
            soak_s=round(soaked, 1),
            catch_up_s=round(caught_up, 1),
            peak_spill=self.peak_spill,
            cleared_s=self.cleared_s,
            events=dict(self.events),
            daemon_drops=figures.get("drops") or {},
        )

    def _soak(self, started: float) -> None:
        plan = self.plan
        next_chaos = started + plan.chaos_every_s
        while True:
            now = time.monotonic()
            elapsed = now - started
            if plan.outage_s and elapsed >= plan.outage_s:
                if self.returned_at is None:
                    self.returned_at = time.monotonic()
                self.start_daemon()
            running = [p for p in self.producers if p and p.poll() is None]
            if plan.total and not running:
                break  # every burst sent
            if not plan.total and elapsed >= plan.duration_s:
                break
            if plan.chaos_every_s and now >= next_chaos:
                self.chaos()
                next_chaos = time.monotonic() + self.rng.expovariate(
                    1 / plan.chaos_every_s
                )
            self.wake_due()
            self.status()
            time.sleep(0.1)

    def _catch_up(self) -> float:
        """Wait until the daemon has replayed and drained everything."""
        started = time.monotonic()
        deadline = started + self.plan.catch_up_s
        settled = 0
        while time.monotonic() < deadline:
            figures = self.status()
            idle = (
                figures.get("ready")
                and figures.get("pid") == getattr(self.daemon, "pid", None)
                and not (figures.get("spill") or {}).get("records")
                and not figures.get("lag_records")
                and not figures.get("last_error")
            )
            settled = settled + 1 if idle else 0
            if settled >= 3:  # three publications in a row
                return time.monotonic() - started
            time.sleep(1.0)
        return time.monotonic() - started

    def close(self) -> None:
        """Leave nothing running or mounted, and no rings behind."""
        self.wake_due(all_now=True)
        for process in [self.daemon, *self.producers]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
        for suffix in ("", ".labels", ".feedback", ".agents"):
            ringbuf.unlink(self.ring + suffix)


def _mount(options: str, where: pathlib.Path) -> None:
    subprocess.run(["mount", "-o", options, str(where)], check=True)


@contextlib.contextmanager
def soak(plan: Plan, workdir: pathlib.Path | None = None) -> Iterator[Soak]:
    """A ``Soak`` in ``workdir`` (or a fresh temporary directory), its
    database on a real tmpfs if the plan says so; cleaned up after."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = pathlib.Path(
                stack.enter_context(tempfile.TemporaryDirectory())
            )
        run = Soak(plan, workdir)
        if plan.db_mount:
            if os.geteuid() != 0:
                raise SystemExit("the chaos soak mounts a tmpfs: run as root")
            from tests import mounts

            stack.enter_context(mounts.tmpfs(run.db_dir, plan.db_mount))
        stack.callback(run.close)
        yield run


def main(argv: list[str]) -> int:
    """``python -m bench.chaos [chaos|outage|burst]``: soak, print a table."""
    mode = argv[0] if argv else "chaos"
    plan = Plan.from_env(mode)
    print(f"chaos soak: {plan}", flush=True)
    with soak(plan) as run:
        result = run.run()
    print(chaos_reconcile.table(result))
    return 0 if result.lost == result.duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
