"""
Prometheus metrics: the daemon's published figures and the per-agent
hourly rollups, read at scrape time and served by prometheus_client on
``metrics_address`` (loopback unless asked otherwise).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from daemon.rollup_metrics import RollupReader
from livemon.config import Config
from livemon.endpoints import parse_address

logger = logging.getLogger("livemon.daemon")

STALE_AFTER_S = 10.0
"""Figures older than this (the loop publishes every second): not up."""
DROP_REASONS = ("ring_full", "spill_cap", "disk_full", "io_error")

Figures = Callable[[], Mapping[str, Any] | None]


class DaemonCollector:
    """Every metric, built at scrape time from ``figures()`` (the dict the
    daemon publishes each second) and the rollups of ``db_path``.

    Counters come from the daemon's own cumulative figures, so nothing
    is counted twice over; the rollups are read through a read-only
    connection at most every ``ROLLUP_CACHE_S``.
    """

    def __init__(
        self,
        figures: Figures,
        db_path: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._figures = figures
        self._clock = clock
        self._rollups = RollupReader(db_path)
        self._build = _build()  # the package metadata is read once

    def collect(self) -> Iterator[Metric]:
        """Yield every metric (called by the registry on each scrape)."""
        figures = self._figures()
        info = InfoMetricFamily("livemon_build", "livemon's version.")
        info.add_metric([], self._build)
        yield info
        up = (
            figures is not None
            and self._clock() - figures.get("published_at", 0.0)
            < STALE_AFTER_S
            and not figures.get("last_error")
        )
        yield _gauge(
            "livemon_up",
            "1 while the daemon publishes its figures and writes its "
            "database; 0 when it is in trouble (see status).",
            int(up),
        )
        if figures is not None:
            yield from _daemon_metrics(figures)
        yield from self._rollups.metrics()


def _build() -> dict[str, str]:
    try:
        version = importlib.metadata.version("livemon")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "python": platform.python_version()}


def _gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text)
    if value is not None:
        family.add_metric([], value)
    return family


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _daemon_metrics(f: Mapping[str, Any]) -> Iterator[Metric]:
    """The published figures, in base units."""
    yield _counter(
        "livemon_drained_records",
        "Records moved from the rings into the database.",
        f.get("drained", 0),
    )
    drops = f.get("drops") or {"ring_full": f.get("dropped", 0)}
    dropped = CounterMetricFamily(
        "livemon_dropped_records",
        "Records producers could not hand over, lost, per reason.",
        labels=["reason"],
    )
    for reason in DROP_REASONS:
        if reason in drops:
            dropped.add_metric([reason], drops[reason])
    yield dropped
    spill = f.get("spill") or {}
    if "spilled" in drops:
        yield _counter(
            "livemon_spilled_records",
            "Records full ring lanes sent to spill files instead.",
            drops["spilled"],
        )
    damaged = CounterMetricFamily(
        "livemon_spill_damaged_records",
        "Spilled records lost to damaged spill files, per kind.",
        labels=["kind"],
    )
    for kind in ("bad_frames", "torn_frames"):
        damaged.add_metric([kind.removesuffix("s")], spill.get(kind, 0))
    yield damaged
    for name, key, text in (
        (
            "spill_replayed_records",
            "spill_replayed",
            "Spilled records replayed into the database.",
        ),
        (
            "quarantined_records",
            "quarantined_records",
            "Damaged records set aside in the quarantine file.",
        ),
        (
            "refused_claims",
            "refused_claims",
            "Ring lane claims refused (every lane taken).",
        ),
        ("daemon_errors", "failures", "Unexpected errors caught, retried."),
    ):
        yield _counter(f"livemon_{name}", text, f.get(key) or 0)
    yield from _daemon_gauges(f, spill)
    yield from _sink_metrics(f.get("sinks") or [])


def _daemon_gauges(
    f: Mapping[str, Any], spill: Mapping[str, Any]
) -> Iterator[Metric]:
    latency_ms = f.get("batch_latency_ms")
    for name, text, value in (
        ("lag_records", "Records in the rings not yet drained.",
         f.get("lag_records")),
        ("lanes_in_use", "Ring lanes owned by a producer.",
         f.get("lanes_in_use")),
        ("database_size_bytes", "The database file plus its WAL.",
         f.get("db_size_bytes")),
        ("spill_backlog_records", "Spilled records not yet replayed.",
         spill.get("records", 0)),
        ("spill_backlog_bytes", "Size of the spill files to replay.",
         spill.get("size_bytes", 0)),
        ("spill_oldest_age_seconds", "Age of the oldest spilled record.",
         spill.get("oldest_age_s")),
        ("batch_latency_seconds", "How long the last commit took.",
         None if latency_ms is None else latency_ms / 1e3),
        ("start_time_seconds", "When the daemon started (Unix time).",
         f.get("started_at")),
    ):  # fmt: skip
        yield _gauge(f"livemon_{name}", text, value)
    fill = GaugeMetricFamily(
        "livemon_ring_fill_ratio",
        "Fill of each ring lane, 0 to 1.",
        labels=["lane"],
    )
    for lane, ratio in enumerate(f.get("ring_fill") or []):
        fill.add_metric([str(lane)], ratio)
    yield fill


def _sink_metrics(sinks: list[Mapping[str, Any]]) -> Iterator[Metric]:
    """Per destination: rows shipped, failed attempts, lag, and spans
    refused for good."""
    if not sinks:
        return
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "shipped_rows": CounterMetricFamily(
            "livemon_sink_shipped_rows",
            "Outbox rows a destination accepted.",
            labels=["sink"],
        ),
        # A counter only from what never goes down: ``failures`` is the
        # run of failures, back to 0 at the first success.
        "failed_attempts": CounterMetricFamily(
            "livemon_sink_failures",
            "Failed shipments since the daemon started.",
            labels=["sink"],
        ),
        "failures": GaugeMetricFamily(
            "livemon_sink_consecutive_failures",
            "Failed shipments in a row; 0 while shipping works.",
            labels=["sink"],
        ),
        "last_error_at": GaugeMetricFamily(
            "livemon_sink_last_error_timestamp_seconds",
            "When the last shipment failed (Unix time; status says why).",
            labels=["sink"],
        ),
        "lag_rows": GaugeMetricFamily(
            "livemon_sink_lag_rows", "Rows not yet shipped.", labels=["sink"]
        ),
        "lag_s": GaugeMetricFamily(
            "livemon_sink_lag_seconds",
            "Age of the oldest row not yet shipped.",
            labels=["sink"],
        ),
    }
    refused = CounterMetricFamily(
        "livemon_sink_refused_spans",
        "Spans (alerts) a destination refused for good, skipped and logged: "
        "rejected (partial success), too_large (413 even alone).",
        labels=["sink", "reason"],
    )
    for sink in sinks:
        name = str(sink.get("sink"))
        for key, family in families.items():
            if isinstance(sink.get(key), (int, float)):
                family.add_metric([name], sink[key])
        for key, count in (sink.get("refused") or {}).items():
            refused.add_metric([name, key.removeprefix("spans_")], count)
    yield from families.values()
    yield refused


def server_for(config: Config, figures: Figures) -> MetricsServer | None:
    """The endpoint ``config.metrics_address`` asks for, or None (off).

    Raises:
        ConfigError: a bad or non-loopback address (``parse_address``).
    """
    address = parse_address(config.metrics_address)
    if address is None:
        return None
    return MetricsServer(address, DaemonCollector(figures, config.db))


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, never joined (``daemon_threads``), as
    prometheus_client's own server; a client's error is no traceback.
    Its listen backlog is not the stdlib's 5, so 50 scrapers at once are
    not left waiting out SYN retries."""

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics: a scrape from %s failed", client_address)


def _serve(
    address: tuple[str, int], registry: CollectorRegistry, idle_s: float
) -> tuple[_Server, threading.Thread]:
    """Serve ``registry`` on ``address`` in a daemon thread.

    What ``prometheus_client.start_http_server`` does, plus a timeout on
    each connection's reads: a client that connects and sends nothing
    (or stalls mid-request) gives its thread back after ``idle_s``.
    """
    host, port = address

    class Handler(WSGIRequestHandler):
        timeout = idle_s

        def log_message(self, format: str, *args: Any) -> None:
            """Log nothing per request (scrapes come every few seconds)."""

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(
        host, port, make_wsgi_app(registry), Server, handler_class=Handler
    )
    thread = threading.Thread(
        target=server.serve_forever, name="livemon-metrics", daemon=True
    )
    thread.start()
    return server, thread


class MetricsServer:
    """The HTTP endpoint, started with the daemon and stopped with it.

    A port that cannot be bound (in use, not permitted) is logged and
    retried by ``upkeep``: the drain never waits on it.
    """

    RETRY_S = 30.0
    IDLE_TIMEOUT_S = 10.0
    """A connection that sends nothing for this long is closed."""

    def __init__(
        self, address: tuple[str, int], collector: DaemonCollector
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.registry.register(ProcessCollector(registry=None))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def url(self) -> str | None:
        """Where it serves (the bound port, when 0 was asked), or None."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/metrics"

    def upkeep(self) -> None:
        """Start serving if not yet serving and a retry is due."""
        if self._server is not None or time.monotonic() < self._retry_at:
            return
        host, port = self.address
        try:
            self._server, self._thread = _serve(
                self.address, self.registry, self.IDLE_TIMEOUT_S
            )
        except OSError as exc:
            self._retry_at = time.monotonic() + self.RETRY_S
            text = f"metrics on {host}:{port}: {exc.strerror or exc}"
            if text != self.last_error:
                logger.error("%s; retrying every %g s", text, self.RETRY_S)
            self.last_error = text
            return
        self.last_error = None
        logger.info("metrics served at %s", self.url)

    def stop(self) -> None:
        """Stop serving (idempotent, bounded by the open scrape)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
