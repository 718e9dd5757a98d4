"""
The overhead of monitoring one whole request, against the seed's "before"
architecture and other ways to log it, measured in the same run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3

import pytest

from livemon import Monitor
from livemon.config import load_config

pytestmark = pytest.mark.benchmark(group="monitor")

ROUNDS = 3000
ITERATIONS = 5  # calls per timed round: amortizes the timer's own cost
REQUEST = {
    "query": "fix the failing test in this python function",
    "category": "code",
    "domains": ["python", "testing"],
    "suggested": ["coder", "reviewer"],
    "actual": ["coder"],
}
ROW = (
    1_700_000_000.0,
    "request",
    "5a1b",
    "code",
    3,
    "code",
    '["python","testing"]',
    '["coder","reviewer"]',
    "parallel",
    0.8,
    '["coder"]',
    0,
    "reviewer busy",
    120.5,
    1,
    None,
    0.9,
    1,
    1,
    0,
    1234,
    12.5,
)
SEED_TABLE = (
    "CREATE TABLE IF NOT EXISTS monitoring_events (id INTEGER PRIMARY KEY, "
    "timestamp, event_type, query_hash, query_category, query_complexity, "
    "intent_category, intent_domains, suggested_agents, routing_strategy, "
    "confidence, actual_agents, accepted, override_reason, "
    "execution_time_ms, success, error, quality_score, task_completed, "
    "code_valid, tests_passed, token_count, context_size_kb)"
)
INSERT = f"INSERT INTO monitoring_events VALUES (NULL{', ?' * len(ROW)})"


def one_request(monitor: Monitor) -> None:
    """Everything a coordinator logs about one request, then the write."""
    with monitor.request(REQUEST["query"], category="support") as ctx:
        ctx.log_intent(
            category=REQUEST["category"],
            domains=REQUEST["domains"],
            complexity=3,
        )
        ctx.log_routing(
            suggested_agents=REQUEST["suggested"],
            strategy="parallel",
            confidence=0.8,
        )
        ctx.log_execution(
            actual_agents=REQUEST["actual"],
            execution_time_ms=120.5,
            success=True,
            token_count=1234,
            context_size_kb=12.5,
        )
        ctx.log_quality(
            score=0.9, task_completed=True, code_valid=True, tests_passed=False
        )
        ctx.log_acceptance(accepted=False, override_reason="reviewer busy")


def test_monitor_request(benchmark, record, ring_name):
    """One whole request through livemon: five log calls and the write."""
    # Capacity for every round, so no draining runs between them.
    config = load_config(
        {"ring": ring_name, "lanes": 1, "capacity_records": 2 * ROUNDS}
    )
    with Monitor(config=config) as monitor:
        benchmark.pedantic(
            one_request,
            args=(monitor,),
            rounds=ROUNDS // ITERATIONS,
            iterations=ITERATIONS,
            warmup_rounds=10,
        )
        assert monitor.counters.recorded >= ROUNDS
        assert monitor.counters.invalid == monitor.counters.dropped == 0
        result = record(benchmark, baseline="test_seed_four_loggers")
    assert result["median_us"] > 0


def test_seed_four_loggers(benchmark, record, tmp_path):
    """The seed's "before": four loggers, each open/insert/commit/close."""
    paths = [
        tmp_path / f"{name}.db"
        for name in ("routing", "acceptance", "performance", "quality")
    ]
    for path in paths:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(SEED_TABLE)
            db.commit()

    def four_writes():
        for path in paths:
            db = sqlite3.connect(path)
            with db:
                db.execute(INSERT, ROW)
            db.close()

    benchmark.pedantic(four_writes, rounds=300)
    record(benchmark)
    with contextlib.closing(sqlite3.connect(paths[0])) as db:
        assert (
            db.execute("SELECT count(*) FROM monitoring_events").fetchone()[0]
            == 300
        )


def test_sqlite_insert_commit(benchmark, record, tmp_path):
    """One insert and commit per request on a persistent connection."""
    db = sqlite3.connect(tmp_path / "one.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SEED_TABLE)

    def write():
        with db:
            db.execute(INSERT, ROW)

    benchmark.pedantic(write, rounds=ROUNDS)
    record(benchmark)
    db.close()


def test_queue_put_of_the_fields(benchmark, record):
    """multiprocessing.Queue.put of the same fields (a reader drains)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    reader = ctx.Process(target=_drain, args=(queue,))
    reader.start()
    benchmark.pedantic(queue.put, args=(ROW,), rounds=ROUNDS)
    record(benchmark)
    queue.put(None)
    reader.join(timeout=30)


def _drain(queue) -> None:
    while queue.get() is not None:
        pass


def prometheus_request(metrics) -> None:
    """What a coordinator counts per request with prometheus_client."""
    requests, tokens, latency, quality = metrics
    requests.labels("code", "parallel").inc()
    tokens.labels("code").inc(1234)
    latency.labels("coder").observe(0.1205)
    quality.labels("coder").observe(0.9)


@pytest.fixture
def prometheus_metrics(tmp_path, monkeypatch):
    """Two counters and two histograms in multiprocess mode (mmap files).

    prometheus_client picks its value class from the environment at
    import; it is set here for this test alone.
    """
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    registry = prometheus_client.CollectorRegistry()
    return (
        prometheus_client.Counter(
            "requests", "", ["category", "strategy"], registry=registry
        ),
        prometheus_client.Counter(
            "tokens", "", ["category"], registry=registry
        ),
        prometheus_client.Histogram(
            "latency_s", "", ["agent"], registry=registry
        ),
        prometheus_client.Histogram(
            "quality", "", ["agent"], registry=registry
        ),
    )


def test_prometheus_multiprocess(benchmark, record, prometheus_metrics):
    """prometheus_client multiprocess mode: 2 counters, 2 observations."""
    benchmark.pedantic(
        prometheus_request,
        args=(prometheus_metrics,),
        rounds=ROUNDS // ITERATIONS,
        iterations=ITERATIONS,
        warmup_rounds=10,
    )
    record(benchmark, baseline="test_monitor_request")
    requests = prometheus_metrics[0].labels("code", "parallel")
    assert requests._value.get() >= ROUNDS


def otel_request(tracer) -> None:
    """One span carrying the request's fields (OpenTelemetry SDK)."""
    with tracer.start_as_current_span("request") as span:
        span.set_attributes(
            {
                "query_category": "support",
                "intent_category": REQUEST["category"],
                "intent_domains": REQUEST["domains"],
                "complexity": 3,
                "suggested_agents": REQUEST["suggested"],
                "strategy": "parallel",
                "confidence": 0.8,
                "actual_agents": REQUEST["actual"],
                "execution_time_ms": 120.5,
                "success": True,
                "token_count": 1234,
                "context_size_kb": 12.5,
                "score": 0.9,
                "task_completed": True,
                "code_valid": True,
                "tests_passed": False,
                "accepted": False,
                "override_reason": "reviewer busy",
            }
        )


def test_otel_span(benchmark, record):
    """One OpenTelemetry span with a BatchSpanProcessor (exporter: none)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        """Counts the spans it is handed and keeps none."""

        exported = 0

        def export(self, spans):
            Discard.exported += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    benchmark.pedantic(
        otel_request,
        args=(provider.get_tracer("bench"),),
        rounds=ROUNDS // ITERATIONS,
        iterations=ITERATIONS,
        warmup_rounds=10,
    )
    record(benchmark, baseline="test_monitor_request")
    provider.shutdown()
    assert Discard.exported > 0
