"""
Column batches shaped as the forwarding machinery hands them to a sink
(contracts: ``events``, ``agent_runs``, ``alerts``, ``adjustments``).
"""

from __future__ import annotations

import json
from typing import Any

BASE_NS = 1_790_000_000_000_000_000


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows (dicts with the same keys) as a column dict."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def request_row(i: int, **change: Any) -> dict[str, Any]:
    """One ``events`` row of a request whose agents ran (ids from ``i``)."""
    row = {
        "id": i,
        "epoch": 1,
        "lane": 0,
        "seq": i,
        "request_id": 1000 + i,
        "timestamp_ns": BASE_NS + i * 1_000_000,
        "timestamp": "2026-09-21 12:00:00.000",
        "event_type": "request",
        "query_hash": "00000000000000ab",
        "query_category": "code",
        "query_complexity": 3,
        "intent_category": "write",
        "intent_domains": '["python"]',
        "suggested_agents": '["coder", "reviewer"]',
        "routing_strategy": "parallel",
        "confidence": 0.75,
        "actual_agents": json.dumps(["coder", "reviewer"]),
        "accepted": 1,
        "override_reason": None,
        "execution_time_ms": 12.5,
        "success": 1,
        "error": None,
        "quality_score": 0.9,
        "task_completed": 1,
        "code_valid": None,
        "tests_passed": None,
        "token_count": 420,
        "context_size_kb": 1.5,
    }
    row.update(change)
    return row


def agent_row(i: int, request: int, **change: Any) -> dict[str, Any]:
    """One ``agent_runs`` row of request ``request`` (``request_row(i)``)."""
    row = {
        "id": i,
        "epoch": 1,
        "lane": 0,
        "seq": i,
        "request_id": 1000 + request,
        "timestamp_ns": BASE_NS + request * 1_000_000 + 1000,
        "pid": 4242,
        "agent": "coder",
        "outcome": "selected",
        "query_category": "code",
        "routing_strategy": "parallel",
        "execution_time_ms": 10.0,
        "success": 1,
        "error": None,
        "input_tokens": 300,
        "output_tokens": 120,
        "quality_score": 0.9,
    }
    row.update(change)
    return row


def alert_row(i: int, **change: Any) -> dict[str, Any]:
    """One ``alerts`` row: a quality regression of category ``code``."""
    row = {
        "id": i,
        "epoch": 1,
        "lane": 0,
        "seq": i,
        "timestamp_ns": BASE_NS + i * 1_000_000,
        "pid": 4242,
        "action": "quality_alert",
        "subject": "code",
        "old_value": 0.85,
        "new_value": 0.61,
        "statistic": 0.28,
        "threshold": 0.2,
        "samples": 150,
        "window_records": 1000,
        "message": "quality regression: mean 0.610 vs baseline 0.850",
    }
    row.update(change)
    return row
