"""
Outbox rows as OTLP/JSON trace spans, after the OpenTelemetry GenAI
semantic conventions v1.41.0 (pure: no I/O, no clock).

A request is one trace.  Its root span is the coordinator's routing
(``invoke_workflow``); each agent run is a child span (``invoke_agent
{name}``).  Requests and agent runs are shipped from two sources on their
own, so nothing is joined: every id derives from the host and the record's
identity, a child finds its parent's id from its ``request_id`` alone, and a
replay re-sends exactly the same ids (backends that upsert by id stay exact).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.outbox import row_dicts

SEMCONV_VERSION = "1.41.0"
"""The semantic-conventions release followed (GenAI: "Development"); v1.41.0
is the last that holds GenAI in the core repository."""
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
SPAN_KIND_INTERNAL = 1  # in-process agents: the "internal" agent span
STATUS_ERROR = 2
ERROR_OTHER = "_OTHER"
"""``error.type`` of a failure that recorded no error text (semconv)."""
PROVIDER = "livemon"
"""``gen_ai.provider.name`` (Required): livemon does not know which model
provider an agent used; the value names the flavour of the telemetry, whose
own attributes are the ``livemon.*`` ones."""

_TRACE = b"livemon-trace"  # blake2b personalisations: one domain per id kind
_ROOT = b"livemon-route"
_AGENT = b"livemon-agent"


def _digest(person: bytes, size: int, host: str, *numbers: int) -> bytes:
    data = host.encode("utf-8", "backslashreplace") + b"\0"
    data += b"".join(n.to_bytes(8, "little", signed=True) for n in numbers)
    digest = hashlib.blake2b(data, digest_size=size, person=person).digest()
    # An all-zero id is invalid in OTLP; 2**-64 odds, handled all the same.
    return digest if any(digest) else b"\0" * (size - 1) + b"\1"


def trace_id(host: str, request_id: int) -> str:
    """The 32-hex-digit trace id of one request (from host, request id)."""
    return _digest(_TRACE, 16, host, request_id).hex()


def root_span_id(host: str, request_id: int) -> str:
    """The 16-hex-digit id of a request's routing span."""
    return _digest(_ROOT, 8, host, request_id).hex()


def agent_span_id(host: str, epoch: int, lane: int, seq: int) -> str:
    """The 16-hex-digit id of one agent run (its identity in the ring)."""
    return _digest(_AGENT, 8, host, epoch, lane, seq).hex()


def _value(value: Any) -> dict[str, Any] | None:
    """One OTLP ``AnyValue``; None for an unknown (NULL or NaN) value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a decimal string in JSON
    if isinstance(value, float):
        return None if not math.isfinite(value) else {"doubleValue": value}
    if isinstance(value, list | tuple):
        items = [v for v in map(_value, value) if v is not None]
        return {"arrayValue": {"values": items}}
    return {"stringValue": str(value)}


def attributes(pairs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OTLP ``KeyValue`` list of ``pairs``, leaving unknown values out."""
    # The common types inline: this runs a dozen times per span, and the
    # call per value would be half the cost of encoding a batch.
    out = []
    for key, raw in pairs.items():
        kind = type(raw)
        if kind is str:
            out.append({"key": key, "value": {"stringValue": raw}})
        elif kind is int:
            out.append({"key": key, "value": {"intValue": str(raw)}})
        elif kind is float:
            if math.isfinite(raw):
                out.append({"key": key, "value": {"doubleValue": raw}})
        elif raw is not None:
            value = _value(raw)
            if value is not None:
                out.append({"key": key, "value": value})
    return out


_MAX_NS = 2**63 - 1


def _times(row: Mapping[str, Any]) -> tuple[str, str]:
    """Start and end (decimal nanoseconds): the record's time plus its
    execution time, or a zero-length span when that is unknown.

    Both are kept within 0..2**63-1: a damaged record's time must not make
    a collector refuse the whole request for ever (fixed64 is unsigned).
    """
    start = min(max(int(row["timestamp_ns"]), 0), _MAX_NS)
    ms = row.get("execution_time_ms")
    end = start
    if isinstance(ms, int | float) and math.isfinite(ms) and ms >= 0:
        # In floats first: a huge duration's nanoseconds overflow to inf.
        end = (
            _MAX_NS if ms * 1e6 >= _MAX_NS - start else start + round(ms * 1e6)
        )
    return str(start), str(end)


def _flag(value: Any) -> bool | None:
    return None if value is None or value < 0 else bool(value)


def _count(value: Any) -> int | None:
    if value is None or value < 0:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a damaged record: no count rather than an error
    return int(value)


def _failure(row: Mapping[str, Any], attrs: dict[str, Any]) -> Any:
    """The span status; sets ``error.type`` on a failed operation."""
    if row.get("success") == 0 or (
        row.get("success") is None and row.get("error")
    ):
        attrs["error.type"] = row.get("error") or ERROR_OTHER
        return {"code": STATUS_ERROR}
    return None


def _agent_list(text: Any) -> tuple[str, ...] | None:
    return _parsed_list(text) if isinstance(text, str) else None


@functools.lru_cache(maxsize=4096)
def _parsed_list(text: str) -> tuple[str, ...] | None:
    """A JSON list's items (cached: few distinct agent lists recur)."""
    try:
        names = json.loads(text)
    except ValueError:
        return (text,)
    return tuple(map(str, names)) if isinstance(names, list) else None


def _span(
    row: Mapping[str, Any],
    ids: tuple[str, str, str],
    name: str,
    attrs: dict[str, Any],
) -> dict[str, Any]:
    status = _failure(row, attrs)
    start, end = _times(row)
    span = {
        "traceId": ids[0],
        "spanId": ids[1],
        "name": name,
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "attributes": attributes(attrs),
    }
    if ids[2]:
        span["parentSpanId"] = ids[2]
    if status:
        span["status"] = status
    return span


def request_spans(
    host: str, columns: Mapping[str, Sequence[Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Root spans of the ``events`` rows; returns (spans, rows left out).

    Rows left out are stage records (``event_type`` other than
    ``request``, written only by ``livemon migrate`` from the legacy
    schema) and records with no request id: neither is a request trace.
    """
    spans, skipped = [], 0
    for row in row_dicts(columns):
        request_id = row.get("request_id")
        if row.get("event_type") != "request" or not request_id:
            skipped += 1
            continue
        strategy = row.get("routing_strategy")
        attrs = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": strategy,
            "livemon.request_id": request_id,
            "livemon.query_category": row.get("query_category"),
            "livemon.routing_strategy": strategy,
            "livemon.confidence": row.get("confidence"),
            "livemon.quality_score": row.get("quality_score"),
            "livemon.accepted": _flag(row.get("accepted")),
            "livemon.override_reason": row.get("override_reason"),
            "livemon.intent_category": row.get("intent_category"),
            "livemon.agents": _agent_list(row.get("actual_agents")),
            "livemon.token_count": _count(row.get("token_count")),
        }
        ids = (trace_id(host, request_id), root_span_id(host, request_id), "")
        name = f"invoke_workflow {strategy}" if strategy else "invoke_workflow"
        spans.append(_span(row, ids, name, attrs))
    return spans, skipped


def agent_spans(
    host: str, columns: Mapping[str, Sequence[Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Child spans of the ``agent_runs`` rows; returns (spans, left out).

    A run with no request id (none is written so, but a damaged record
    could be) has no trace to join and is left out.
    """
    spans, skipped = [], 0
    for row in row_dicts(columns):
        request_id = row.get("request_id")
        if not request_id:
            skipped += 1
            continue
        agent = row.get("agent")
        attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.agent.name": agent,
            "gen_ai.usage.input_tokens": _count(row.get("input_tokens")),
            "gen_ai.usage.output_tokens": _count(row.get("output_tokens")),
            "livemon.request_id": request_id,
            "livemon.outcome": row.get("outcome"),
            "livemon.quality_score": row.get("quality_score"),
            "livemon.query_category": row.get("query_category"),
            "livemon.routing_strategy": row.get("routing_strategy"),
        }
        identity = (row["epoch"], row["lane"], row["seq"])
        ids = (
            trace_id(host, request_id),
            agent_span_id(host, *identity),
            root_span_id(host, request_id),
        )
        name = f"invoke_agent {agent}" if agent else "invoke_agent"
        spans.append(_span(row, ids, name, attrs))
    return spans, skipped


def export_request(
    host: str, version: str, spans: list[dict[str, Any]]
) -> bytes:
    """The OTLP/JSON ``ExportTraceServiceRequest`` body holding ``spans``.

    Args:
        host: the machine the records come from (resource ``host.name``).
        version: livemon's version (the instrumentation scope's).
        spans: from ``request_spans`` and ``agent_spans``.
    """
    resource = {"service.name": "livemon", "host.name": host}
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes(resource)},
                "scopeSpans": [
                    {
                        "scope": {"name": "livemon", "version": version},
                        "schemaUrl": SCHEMA_URL,
                        "spans": spans,
                    }
                ],
                "schemaUrl": SCHEMA_URL,
            }
        ]
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
