"""
Process control: the pidfile, the one-daemon-per-ring-and-database locks,
finding the running daemon by identity, starting it detached, stopping it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

import psutil

import ringbuf
from daemon.exceptions import (
    AlreadyRunning,
    DaemonError,
    NotRunning,
    StartFailed,
    StopTimedOut,
)
from daemon.store import check_database_path
from livemon import ipc
from livemon.config import Config, dir_mode
from livemon.db.writer import create_file
from livemon.ipc import read_status

_CREATE_TIME_TOLERANCE_S = 0.05
_START_FIELD = 22  # /proc/<pid>/stat: start time, clock ticks after boot


def start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot.

    Read from ``/proc/<pid>/stat`` alone: unlike psutil's create_time it
    needs no ``/proc/stat`` (hidden by systemd's ``ProcSubset=pid``), and
    it is exact, so it needs no tolerance.

    Raises:
        ProcessLookupError: no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except (FileNotFoundError, PermissionError):
        raise ProcessLookupError(pid) from None
    # The command name (field 2) may hold spaces and parentheses: the
    # fields after it start behind the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[_START_FIELD - 3])


def make_private_dir(path: str, mode: int) -> None:
    """Create directory ``path`` (and parents) for files of ``mode``
    (``dir_mode``); an existing one is left as it is."""
    os.makedirs(path, mode=dir_mode(mode), exist_ok=True)


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so readers never see half a file.

    Raises:
        OSError: the directory is full, read-only or not writable.
    """
    directory = os.path.dirname(os.path.abspath(path))
    make_private_dir(directory, mode)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Pidfile:
    """A pidfile holding the daemon's identity: pid and process start time.

    A pid alone can be reused by an unrelated process after a crash; the
    start time (clock ticks after boot, ``start_ticks``) makes the
    identity unambiguous.  A pidfile of an older livemon holds psutil's
    create_time (a float) instead, and is still understood.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, mode: int = 0o600) -> None:
        """Record this process as the daemon (mkstemp plus rename).

        Raises:
            OSError: the directory is full, read-only or not writable.
        """
        pid = os.getpid()
        write_atomic(self.path, f"{pid}\n{start_ticks(pid)}\n", mode)

    def read(self) -> tuple[int, int | float] | None:
        """Return (pid, start ticks or legacy create_time), or None if
        absent or unreadable."""
        try:
            # Non-blocking: a FIFO at the path would wait for a writer.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd) as file:
                pid_text, time_text = file.read(4096).split()[:2]
            start: int | float = (
                float(time_text) if "." in time_text else int(time_text)
            )
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return (pid, start) if pid > 0 else None  # psutil refuses -1

    def process(self) -> psutil.Process | None:
        """The live process the pidfile names, or None if it is stale."""
        identity = self.read()
        if identity is None:
            return None
        pid, started = identity
        try:
            if isinstance(started, int):
                same = start_ticks(pid) == started
            else:
                same = abs(psutil.Process(pid).create_time() - started) < (
                    _CREATE_TIME_TOLERANCE_S
                )
            process = psutil.Process(pid)
            # A zombie has exited; only its parent's wait is missing.
            dead = process.status() == psutil.STATUS_ZOMBIE
        except (psutil.Error, ProcessLookupError):
            return None
        return process if same and not dead and process.is_running() else None

    def remove_if_mine(self) -> None:
        """Remove the pidfile if it still names this process."""
        identity = self.read()
        if identity is not None and identity[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class InstanceLock:
    """The one-daemon rule: the ring's consumer lock and a database lock.

    Two daemons on one ring would steal each other's records; two on one
    database would fight over its write lock.  The kernel drops both
    locks when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, config: Config, ring: ringbuf.Ring) -> None:
        self._config = config
        self._ring = ring
        self._fd = -1
        self._locked: tuple[int, int] | None = None

    def acquire(self) -> None:
        """Take both locks.

        Raises:
            AlreadyRunning: another daemon holds one; stop it first.
        """
        if not self._ring.lock_consumer():
            self._refuse(f"ring {self._config.ring!r}")
        self.lock_database()

    def lock_database(self) -> None:
        """Hold the lock on the file now at the database's path.

        A no-op while the path names the file already locked; after the
        file was deleted or replaced, the new one is locked (and created
        if missing) before anything is written to it.

        Raises:
            AlreadyRunning: another daemon holds the file now at the path.
            OSError: it cannot be created or opened.
        """
        path = self._config.db
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(path)
            if self._locked == (info.st_dev, info.st_ino):
                return
        # flock() on the database file itself: independent of SQLite's
        # fcntl() locks on Linux, and it needs no writable directory, so a
        # database on a read-only filesystem is locked, then retried.
        create_file(path, self._config.mode)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(f"database {path}")
        info = os.fstat(fd)
        self.release()
        self._fd = fd
        self._locked = (info.st_dev, info.st_ino)

    def release(self) -> None:
        """Drop the database lock (the ring's goes with ``ring.close``)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._locked = None

    def _refuse(self, what: str) -> None:
        holder = Pidfile(self._config.pidfile).read()
        who = f" (pid {holder[0]})" if holder else ""
        raise AlreadyRunning(
            f"another livemon daemon{who} already drains {what}: stop it "
            "with 'livemon-daemon stop', or use another --ring/--db"
        )


def start_detached(
    config: Config, argv: list[str], timeout_s: float = 30.0
) -> psutil.Process:
    """Start ``python -m daemon start --foreground`` in its own session.

    Its output goes to ``config.log_file``.  Returns once the daemon has
    published a ready status.

    Raises:
        AlreadyRunning: a live daemon already owns the pidfile.
        StartFailed: the daemon exited or was not ready in time.
    """
    running = Pidfile(config.pidfile).process()
    if running is not None:
        raise AlreadyRunning(
            f"livemon daemon already running (pid {running.pid}): "
            "'livemon-daemon status' shows it"
        )
    # What can never work is said here, not in a log made beside it.
    with contextlib.suppress(sqlite3.Error):  # locked: the daemon retries
        check_database_path(config.db)
    make_private_dir(os.path.dirname(config.log_file) or ".", config.mode)
    fd = os.open(
        config.log_file,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
        config.mode,
    )
    with contextlib.suppress(OSError):  # a log from before may be 0644
        os.fchmod(fd, config.mode)
    with os.fdopen(fd, "ab") as log:
        offset = log.seek(0, os.SEEK_END)
        child = subprocess.Popen(
            [sys.executable, "-m", "daemon", "start", "--foreground", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            said = _child_error(config.log_file, offset)
            raise StartFailed(
                f"the daemon exited with status {child.returncode}: "
                + (
                    f"{said} (log: {config.log_file})"
                    if said
                    else f"see {config.log_file}"
                )
            )
        status = read_status(config)
        if status and status.get("pid") == child.pid and status.get("ready"):
            return psutil.Process(child.pid)
        time.sleep(0.05)
    child.terminate()
    raise StartFailed(
        f"the daemon did not become ready in {timeout_s:.0f} s: see "
        f"{config.log_file}"
    )


def _child_error(log_file: str, offset: int) -> str:
    """What a daemon that exited at start said was wrong: its last
    ``Error: ...`` line in the log after ``offset``, or "" if none.

    Shown by ``start`` so that a refusal reads in one line, as with
    ``--foreground``, instead of sending people to the log.
    """
    try:
        with open(log_file, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - 64 * 1024))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return ""
    said = [line for line in text.splitlines() if line.startswith("Error: ")]
    return said[-1].removeprefix("Error: ") if said else ""


def stop(config: Config, timeout_s: float = 30.0) -> int:
    """Send SIGTERM to the daemon and wait for its final drain.

    Returns the pid stopped.

    Raises:
        NotRunning: no live daemon matches the pidfile.
        StopTimedOut: it did not exit within ``timeout_s``.
    """
    process = Pidfile(config.pidfile).process()
    if process is None:
        raise NotRunning(f"no livemon daemon is running ({config.pidfile})")
    try:
        process.send_signal(signal.SIGTERM)
    except psutil.AccessDenied:
        raise DaemonError(
            f"permission denied: the daemon (pid {process.pid}) is not "
            "this user's: stop it as its user (the service's: sudo -u "
            "livemon livemon-daemon stop) or as root"
        ) from None
    try:
        process.wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        raise StopTimedOut(
            f"daemon pid {process.pid} did not stop within {timeout_s:.0f} s;"
            " it may still be draining: wait, or kill it (no data is lost)"
        ) from None
    return int(process.pid)


def unlink_rings(config: Config) -> None:
    """Remove every segment of ``config`` once nothing is left in them:
    each ring (the agents ring too) and the feedback decisions segment,
    each with its lock file (``ipc.segments``).

    Raises:
        DaemonError: a coordinator still holds a lane, or records are
            still pending (start the daemon again to drain them).
    """
    rings = []
    for spec in ipc.every_ring(config):
        with contextlib.suppress(ringbuf.RingNotFound):
            rings.append(ipc.attach_ring(spec))
    try:
        for ring in rings:
            states = [ring.lane_state(i) for i in range(ring.lanes)]
            if any(s.owned for s in states):
                raise DaemonError(
                    f"ring {ring.name!r} is still used by a coordinator: "
                    "stop the coordinators first"
                )
            if any(s.pending for s in states):
                raise DaemonError(
                    f"ring {ring.name!r} still holds records: start the "
                    "daemon again to drain them"
                )
    finally:
        for ring in rings:
            ring.close()
    for name in ipc.segments(config):
        ringbuf.unlink(name)


def open_and_lock(
    config: Config,
) -> tuple[ringbuf.Ring, ringbuf.Ring, ringbuf.Ring, InstanceLock]:
    """Attach (or create) the three rings and take the instance lock.

    A daemon refused here leaves nothing behind: a ring it created and no
    coordinator has used since is removed again.
    """
    rings: list[ringbuf.Ring] = []
    created: list[ringbuf.Ring] = []
    try:
        for spec in ipc.all_rings(config):
            ring, made = ipc.open_ring_created(config, spec)
            rings.append(ring)
            if made:
                created.append(ring)
        lock = InstanceLock(config, rings[0])
        lock.acquire()
    except BaseException:
        unused = [r for r in created if _unused(r)]
        for ring in rings:
            ring.close()
        for ring in unused:
            ring.unlink()
        raise
    return rings[0], rings[1], rings[2], lock


def _unused(ring: ringbuf.Ring) -> bool:
    states = [ring.lane_state(i) for i in range(ring.lanes)]
    return not any(s.owned or s.head for s in states)


def reopen_log(path: str) -> None:
    """Point stdout and stderr at ``path`` again (after log rotation).

    Only when stderr is a regular file (a detached daemon's log); under
    systemd it is the journal, in a terminal a tty: both are left alone.
    A path that cannot be opened (a directory, a missing one) keeps the
    log where it was, and says so there: the daemon runs on.
    """
    if not stat.S_ISREG(os.fstat(2).st_mode):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        logging.getLogger("livemon.daemon").error(
            "cannot reopen the log at %s (%s): it stays where it was; fix "
            "log_file and send SIGHUP again",
            path,
            exc.strerror or exc,
        )
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def remove_file(path: str) -> None:
    """Remove ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
