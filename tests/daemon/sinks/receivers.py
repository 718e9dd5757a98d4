"""
Real HTTP receivers on loopback for the OTLP and webhook sink tests: a
stdlib server that checks OTLP/JSON strictly, answers as scripted (429, 503,
``Retry-After``, partial success) and can go away and come back on its port.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_DECIMAL = re.compile(r"-?[0-9]+")
_VALUE_KEYS = {
    "stringValue": str,
    "boolValue": bool,
    "intValue": str,
    "doubleValue": (int, float),
    "arrayValue": dict,
}
_SPAN_KEYS = {
    "traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano",
    "endTimeUnixNano", "attributes", "status", "traceState", "flags",
    "events", "links", "droppedAttributesCount",
}  # fmt: skip


class InvalidOtlp(ValueError):
    """The body is not valid OTLP/JSON; the message says where."""


def _check(condition: bool, where: str) -> None:
    if not condition:
        raise InvalidOtlp(where)


def _check_value(value: Any, where: str) -> None:
    _check(isinstance(value, dict) and len(value) == 1, f"{where}: AnyValue")
    ((kind, inner),) = value.items()
    _check(kind in _VALUE_KEYS, f"{where}: value kind {kind}")
    _check(isinstance(inner, _VALUE_KEYS[kind]), f"{where}: {kind} type")
    if kind == "intValue":
        _check(bool(_DECIMAL.fullmatch(inner)), f"{where}: int64 as string")
    if kind == "arrayValue":
        _check(set(inner) <= {"values"}, f"{where}: arrayValue keys")
        for i, item in enumerate(inner.get("values", [])):
            _check_value(item, f"{where}[{i}]")


def _check_attributes(attributes: Any, where: str) -> None:
    _check(isinstance(attributes, list), f"{where}: attributes list")
    keys = [a.get("key") for a in attributes]
    _check(len(keys) == len(set(keys)), f"{where}: duplicate keys")
    for item in attributes:
        _check(set(item) == {"key", "value"}, f"{where}: KeyValue keys")
        _check_value(item["value"], f"{where}.{item['key']}")


def _check_span(span: Any, where: str) -> None:
    _check(isinstance(span, dict), where)
    _check(set(span) <= _SPAN_KEYS, f"{where}: keys {set(span) - _SPAN_KEYS}")
    _check(bool(_HEX32.fullmatch(span["traceId"])), f"{where}: traceId hex")
    _check(span["traceId"] != "0" * 32, f"{where}: zero traceId")
    _check(bool(_HEX16.fullmatch(span["spanId"])), f"{where}: spanId hex")
    _check(span["spanId"] != "0" * 16, f"{where}: zero spanId")
    parent = span.get("parentSpanId", "")
    _check(parent == "" or bool(_HEX16.fullmatch(parent)), f"{where}: parent")
    _check(isinstance(span["name"], str) and span["name"], f"{where}: name")
    _check(span.get("kind") in range(6), f"{where}: kind is an enum integer")
    start, end = span["startTimeUnixNano"], span["endTimeUnixNano"]
    _check(isinstance(start, str) and isinstance(end, str), f"{where}: times")
    _check(bool(_DECIMAL.fullmatch(start)), f"{where}: start as string")
    _check(bool(_DECIMAL.fullmatch(end)), f"{where}: end as string")
    _check(int(end) >= int(start) > 0, f"{where}: end >= start > 0")
    _check_attributes(span.get("attributes", []), where)
    if "status" in span:
        status = span["status"]
        _check(set(status) <= {"code", "message"}, f"{where}: status keys")
        _check(status.get("code") in (0, 1, 2), f"{where}: status enum")


def otlp_spans(body: bytes) -> list[dict[str, Any]]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest``, checked.

    Checks the JSON-encoding rules (hex ids, integer enums, int64 as
    strings, one value kind per ``AnyValue``, no unknown fields), then has
    protobuf's own parser decode it (ids as base64, as protobuf's JSON
    mapping wants), which refuses anything the schema does not hold.

    Raises:
        InvalidOtlp: where the body breaks a rule.
    """
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise InvalidOtlp(f"not JSON: {exc}") from None
    _check(set(request) == {"resourceSpans"}, "top-level keys")
    spans = []
    for r, resource in enumerate(request["resourceSpans"]):
        where = f"resourceSpans[{r}]"
        _check(set(resource) <= {"resource", "scopeSpans", "schemaUrl"}, where)
        _check_attributes(resource["resource"]["attributes"], where)
        for s, scope in enumerate(resource["scopeSpans"]):
            _check(set(scope) <= {"scope", "spans", "schemaUrl"}, where)
            for i, span in enumerate(scope["spans"]):
                _check_span(span, f"{where}.scopeSpans[{s}].spans[{i}]")
                spans.append(span)
    try:
        json_format.Parse(
            json.dumps(_base64_ids(request)), ExportTraceServiceRequest()
        )
    except json_format.ParseError as exc:
        raise InvalidOtlp(f"protobuf refuses it: {exc}") from None
    return spans


def _base64_ids(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with hex ids in base64 (protobuf's JSON bytes form)."""
    copy = json.loads(json.dumps(request))
    for resource in copy["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        raw = bytes.fromhex(span[key])
                        span[key] = base64.b64encode(raw).decode()
    return copy


def protobuf_spans(body: bytes) -> list[Span]:
    """The spans of an OTLP/HTTP protobuf body (gzipped or not).

    Raises:
        InvalidOtlp: it does not decode.
    """
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise InvalidOtlp(f"not OTLP protobuf: {exc}") from None
    return [
        span
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


def to_protobuf(body: bytes) -> bytes:
    """An OTLP/JSON body as OTLP/HTTP protobuf bytes (for oteltap)."""
    message = json_format.Parse(
        json.dumps(_base64_ids(json.loads(body))), ExportTraceServiceRequest()
    )
    return message.SerializeToString()


Reply = tuple[int, dict[str, str], bytes]


class Receiver:
    """A loopback HTTP server that records POSTs and answers as scripted.

    ``script`` holds the next answers (status, headers, body); when it is
    empty the answer is ``default``.  A body above ``max_body_bytes`` (if
    set) gets 413, as a collector with that body limit answers.
    ``check`` (``otlp_spans`` for OTLP) runs on every body first: a body
    it refuses gets 400 and is recorded in ``refused``, so a test fails
    on any invalid payload.

    Attributes:
        accepted: bodies answered 2xx, in order.
        refused: (body, reason) of bodies the check refused.
        answers: the status of every POST, in order.
        sizes: the length of every body, in order.
    """

    def __init__(
        self, check: Callable[[bytes], Any] | None = None, port: int = 0
    ) -> None:
        self.check = check
        self.script: collections.deque[Reply] = collections.deque()
        self.default: Reply = (
            200,
            {"Content-Type": "application/json"},
            b"{}",
        )
        self.accepted: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.refused: list[tuple[bytes, str]] = []
        self.answers: list[int] = []
        self.sizes: list[int] = []
        self.max_body_bytes: int | None = None
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on ``port`` (a free one the first time)."""
        handler = _handler(self)
        deadline = time.monotonic() + 10
        while True:
            try:
                server = http.server.ThreadingHTTPServer(
                    ("127.0.0.1", self.port), handler
                )
                break
            except OSError:  # the port may linger a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Go away: stop listening (connections are then refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reply(self, body: bytes, headers: dict[str, str]) -> Reply:
        """Record one POST; return the answer it gets."""
        with self._lock:
            self.sizes.append(len(body))
            limit = self.max_body_bytes
            if limit is not None and len(body) > limit:
                self.answers.append(413)
                return 413, {}, b"request body too large"
            if self.check is not None:
                try:
                    self.check(body)
                except ValueError as exc:
                    self.refused.append((body, str(exc)))
                    self.answers.append(400)
                    return 400, {}, str(exc).encode()
            answer = self.script.popleft() if self.script else self.default
            self.answers.append(answer[0])
            if 200 <= answer[0] < 300:
                self.accepted.append(body)
                self.headers.append(headers)
            return answer

    def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float = 30
    ) -> None:
        """Poll until ``predicate()``; fail on timeout."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out; answers {self.answers}, "
                    f"refused {self.refused}"
                )
            time.sleep(0.02)


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            receiver.paths.append(self.path)
            status, headers, data = receiver.reply(body, dict(self.headers))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass  # quiet: the test reads the recorded answers

    return Handler


def sink_figures(daemon: Any, name: str) -> dict[str, Any]:
    """A running daemon's published figures of sink ``name`` ({} before
    its first status)."""
    for figures in daemon.status().get("sinks") or ():
        if figures.get("sink") == name:
            return dict(figures)
    return {}


def free_port() -> int:
    """A TCP port free on loopback now."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
