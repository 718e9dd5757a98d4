"""
Peak RSS of a real daemon forwarding an outbox of rows with 4 KiB texts
(error and override reason) to a loopback OTLP receiver or a local
ClickHouse server: ``python -m bench.forward_rss --sink otlp`` prints
the daemon's VmHWM with no sink (the floor) and with the sink.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import ringbuf
from daemon.store import Store
from livemon import ipc
from livemon.config import load_config
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_id, label_record

ROWS = 20_000
TEXTS = 200  # distinct 4 KiB texts; each row carries two of them


def fill(db_path: str, rows: int) -> None:
    """``rows`` events whose error and override reason are 4 KiB each."""
    texts = [f"{n:05d} " + "x" * 4090 for n in range(2 * TEXTS)]
    raw = b"".join(label_record(t) for t in texts)
    labels = ringbuf.Batch(0, 0, np.frombuffer(raw, LABEL_DTYPE).copy())
    records = np.zeros(rows, RECORD_DTYPE)
    records["timestamp_ns"] = time.time_ns() + np.arange(rows)
    records["request_id"] = np.arange(rows) + 1
    records["success"] = 0
    records["execution_time_ms"] = 5.0
    ids = np.array([label_id(t) for t in texts])
    records["error"] = ids[np.arange(rows) % TEXTS]
    records["override_reason"] = ids[TEXTS + np.arange(rows) % TEXTS]
    store = Store(db_path)
    try:
        store.write(1, [labels], [ringbuf.Batch(0, 0, records)])
    finally:
        store.close()


class Spans:
    """A loopback OTLP/HTTP receiver that counts the spans it took."""

    def __init__(self) -> None:
        self.count = 0
        self.posts = 0
        self.largest_bytes = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                owner.count += sum(
                    len(scope["spans"])
                    for resource in request["resourceSpans"]
                    for scope in resource["scopeSpans"]
                )
                owner.posts += 1
                owner.largest_bytes = max(owner.largest_bytes, len(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), Handler
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def peak_rss_kib(pid: int) -> int:
    """The process's VmHWM (peak resident set) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def run_daemon(env: dict[str, str], done, timeout_s: float = 300) -> int:
    """Start a daemon with ``env``; once ``done()``, its peak RSS (KiB)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "start", "--foreground"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the daemon did not finish forwarding")
            time.sleep(0.05)
        return peak_rss_kib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def main() -> None:
    """Measure and print the peak RSS with and without the sink."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink", choices=("otlp", "clickhouse"))
    parser.add_argument("--rows", type=int, default=ROWS)
    args = parser.parse_args()
    ring = f"rss{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _measure(args, tmp, ring)
    finally:  # a stopped daemon leaves its rings, by design: not ours
        for segment in ipc.segments(load_config({"ring": ring}, env={})):
            ringbuf.unlink(segment)


def _measure(args: argparse.Namespace, tmp: str, ring: str) -> None:
    """Peak RSS of the daemon without, then with, the sink."""
    db = os.path.join(tmp, "u.db")
    fill(db, args.rows)
    env = dict(os.environ)
    env.update(
        LIVEMON_RING=ring,
        LIVEMON_DB=db,
        LIVEMON_PIDFILE=os.path.join(tmp, "d.pid"),
        LIVEMON_RETENTION_DAYS="100000",
    )
    settle = time.monotonic() + 3.0
    floor = run_daemon(env, lambda: time.monotonic() > settle)
    print(f"no sink: peak RSS {floor / 1024:.0f} MiB")
    if args.sink == "otlp":
        spans = Spans()
        env["LIVEMON_OTLP_ENDPOINT"] = spans.url
        started = time.monotonic()
        peak = run_daemon(env, lambda: spans.count >= args.rows)
        took = time.monotonic() - started
        print(
            f"otlp: peak RSS {peak / 1024:.0f} MiB, {spans.posts} posts, "
            f"largest {spans.largest_bytes / 2**20:.1f} MiB, {took:.1f} s"
        )
    elif args.sink == "clickhouse":
        import pathlib

        from tests.daemon.sinks.clickhouse_server import ClickHouseServer

        # Its connection logger writes a traceback per refused poll.
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        server = ClickHouseServer(pathlib.Path(tmp) / "ch")
        server.start()
        try:
            env["LIVEMON_CLICKHOUSE_URL"] = server.url("rss")
            started = time.monotonic()

            def shipped() -> bool:
                try:
                    got = server.query("SELECT count() FROM rss.events")
                except Exception:  # the table is created on first ship
                    return False
                return bool(got[0][0] >= args.rows)

            peak = run_daemon(env, shipped)
            took = time.monotonic() - started
            print(f"clickhouse: peak RSS {peak / 1024:.0f} MiB, {took:.1f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
