"""
Helpers for the daemon's resilience tests: writing records straight into
the rings (bad ones too), scribbling on lane cursors, small filesystems.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import time

import numpy as np

import ringbuf
from livemon import ipc
from livemon import record as rec
from livemon.config import load_config
from ringbuf import _layout


def config_of(env: dict[str, str]):
    """The configuration a daemon started with ``env`` resolves."""
    return load_config(env=env)


def put(env: dict[str, str], which: str, records: np.ndarray) -> None:
    """Write ``records`` into ring ``which`` (events, labels, feedback)
    from a lane of this process, then give the lane back."""
    spec = getattr(ipc, f"{which}_ring")(config_of(env))
    ring = ipc.open_ring(config_of(env), spec)
    try:
        writer = ring.writer()
        writer.put_many(records)
        writer.close()
    finally:
        ring.close()


def events(count: int, start_ns: int | None = None) -> np.ndarray:
    """``count`` plausible request records, stamped now."""
    records = np.zeros(count, rec.RECORD_DTYPE)
    now = time.time_ns() if start_ns is None else start_ns
    records["timestamp_ns"] = now + np.arange(count)
    records["request_id"] = np.arange(1, count + 1) + now % 2**40
    records["pid"] = os.getpid()
    records["success"] = 1
    records["execution_time_ms"] = 10.0
    return records


def set_cursors(
    env: dict[str, str], lane: int, head: int | None, tail: int | None
) -> None:
    """Overwrite a lane's head and/or tail word in the events ring, as a
    damaged or foreign process could."""
    ring = ipc.attach_ring(ipc.events_ring(config_of(env)))
    try:
        words = ring._lanes.words()  # tests may reach into ringbuf
        base = ring._lanes.lane_word(lane)
        if head is not None:
            words[base + _layout.L_HEAD] = head
        if tail is not None:
            words[base + _layout.L_TAIL] = tail
    finally:
        ring.close()


def lane_state(env: dict[str, str], lane: int) -> ringbuf.LaneState:
    """A lane's counters in the events ring."""
    ring = ipc.attach_ring(ipc.events_ring(config_of(env)))
    try:
        return ring.lane_state(lane)
    finally:
        ring.close()


def count(path: str | os.PathLike[str], sql: str) -> int:
    """One number from ``path`` (read-only), or -1 if it has no answer."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        ) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return -1


def fill(directory: pathlib.Path) -> pathlib.Path:
    """Fill ``directory``'s filesystem to the last byte; return the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as file:
        chunk = b"\xa5" * 2**16
        with contextlib.suppress(OSError):
            while True:
                file.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                file.write(b"\xa5")
    return filler


def on_small_disk(env: dict[str, str], mount: pathlib.Path) -> dict[str, str]:
    """``env`` with the database on ``mount`` (a tmpfs of 16 to 64 MiB),
    and the room the daemon keeps free scaled down to it: 4 MiB, twice
    the WAL of a transaction of 1,000 records at most."""
    return dict(
        env,
        LIVEMON_DB=str(mount / "u.db"),
        LIVEMON_DB_MIN_FREE_BYTES=str(4 * 2**20),
        LIVEMON_BATCH_RECORDS="1000",
    )


def free_bytes(mount: pathlib.Path) -> int:
    """Free space on ``mount``'s filesystem."""
    fs = os.statvfs(mount)
    return fs.f_bavail * fs.f_frsize


def output(run) -> str:
    """Everything the daemon wrote to stdout and stderr, once it ended."""
    stream = run.process.stderr
    if stream is not None:
        return stream.read()
    for name in ("output", "output_path", "log_path", "log"):
        path = getattr(run, name, None)
        if isinstance(path, str | os.PathLike) and os.path.exists(path):
            return pathlib.Path(path).read_text()
    return ""
