"""
The OTLP/HTTP traces destination: requests and agent runs from the outbox
POSTed as OTLP/JSON to a collector's ``/v1/traces`` (stdlib only).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from daemon.forward import DestinationError, Rows
from daemon.sinks import _otlp_encode as encode
from daemon.sinks._otlp_http import Endpoint, PayloadTooLarge, post
from livemon import __version__
from livemon.config import MIN_BATCH_BYTES, Config
from livemon.exceptions import ConfigError

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
CONTENT_TYPE = "application/json"
DEFAULT_TIMEOUT_S = 10.0
MAX_SPANS_PER_POST = 512
"""Spans in one request: the OTel SDK's batch (~450 KB of JSON), far
below a collector's default 20 MiB body limit."""
MAX_POST_BYTES = 4 * 2**20
"""A body above this goes in halves: a collector's default limit is
20 MiB, others take less; 512 spans of long texts can reach 40 MiB.  A
413 for a smaller body lowers the limit (``post_limit_bytes``)."""
BATCH_BYTES = Config.otlp_batch_bytes  # the setting's default
"""A forwarded batch's estimated size (``outbox.row_bytes``): below the
4 MiB body limit common among OTLP receivers, with a margin."""
_Encoder = Callable[
    [str, Mapping[str, list[Any]]], tuple[list[dict[str, Any]], int]
]
_ENCODERS: dict[str, _Encoder] = {
    "events": encode.request_spans,
    "agent_runs": encode.agent_spans,
}
HEADERS_ENV = (
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
)
"""Where extra headers (a collector's or Langfuse's ``Authorization``) come
from, as every OpenTelemetry exporter reads them: the first one set."""


def otlp_headers(env: Mapping[str, str]) -> dict[str, str]:
    """The headers of ``HEADERS_ENV``: ``key=value`` pairs, comma-separated,
    values percent-encoded (the OTel exporter format).

    Raises:
        ValueError: a pair without ``=`` (the value is never quoted back:
            it may be a secret).
    """
    raw = next((env[name] for name in HEADERS_ENV if env.get(name)), "")
    headers = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"{' or '.join(HEADERS_ENV)} holds an entry that is not "
                "key=value; write it as key1=value1,key2=value2"
            )
        headers[key.strip()] = urllib.parse.unquote(value.strip())
    return headers


def traces_endpoint(url: str) -> Endpoint:
    """Where ``otlp_endpoint`` sends traces: its path plus ``/v1/traces``.

    As ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read: ``http://127.0.0.1:4318``
    posts to ``http://127.0.0.1:4318/v1/traces`` and a base with a path
    (``https://host/api/public/otel``) gets ``/v1/traces`` after it; a URL
    that already ends with ``/v1/traces`` is taken as it is.

    Raises:
        ValueError: not an http(s) URL with a host (the message says so).
    """
    endpoint = Endpoint.parse(url, "otlp_endpoint")
    path, _, query = endpoint.path.partition("?")
    if not path.endswith(TRACES_PATH):
        path = path.rstrip("/") + TRACES_PATH
    path += "?" + query if query else ""
    return Endpoint(endpoint.scheme, endpoint.host, endpoint.port, path)


def from_config(
    config: Config, host: str, env: Mapping[str, str] = os.environ
) -> OtlpDestination:
    """The destination ``otlp_endpoint`` asks for, headers from ``env``.

    Raises:
        ConfigError: a bad endpoint or headers (the message says which).
    """
    try:
        return OtlpDestination(
            config.otlp_endpoint,
            host,
            version=__version__,
            headers=otlp_headers(env),
            batch_bytes=config.otlp_batch_bytes,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class OtlpDestination:
    """Ships ``events`` (root spans) and ``agent_runs`` (child spans).

    A batch goes in requests of ``MAX_SPANS_PER_POST`` spans (as the OTel
    SDK batches); when one fails, the retried batch skips the rows whose
    request was taken (``_taken``), so no span is posted twice while the
    daemon runs.  A body the collector refuses as too large (413) is sent
    again in halves, down to one row's spans, which are counted and
    skipped if still refused; no span is lost to a limit it could take
    nor retried for ever.  A collector sees a duplicate only when it took
    a request whose answer never came back, or when the daemon was killed
    before it stored the mark; both re-send the same ids
    (``_otlp_encode``), so backends that upsert by span id stay exact.

    Attributes:
        spans_sent: spans the collector accepted.
        spans_rejected: spans a collector's partial success refused (the
            OTLP spec forbids retrying them; each refusal is logged).
        rows_left_out: rows that are no span (legacy stage records).
        spans_too_large: spans of rows the collector refused (413) even
            alone, skipped (each is logged with what to do).
        post_limit_bytes: the largest body sent whole: ``MAX_POST_BYTES``
            until a 413 for a smaller one.
    """

    name = "otlp"
    sources: tuple[str, ...] = ("events", "agent_runs")

    def refused(self) -> dict[str, int]:
        """What status shows of the spans the collector would not take."""
        return {
            "spans_rejected": self.spans_rejected,
            "spans_too_large": self.spans_too_large,
        }

    def __init__(
        self,
        endpoint: str,
        host: str,
        *,
        version: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        """Check the settings; nothing is sent before the first ``ship``.

        Args:
            endpoint: ``otlp_endpoint`` (see ``traces_endpoint``).
            host: names the machine; it is in every id and the resource.
            version: livemon's version, the instrumentation scope's.
            timeout_s: longest one POST may take.
            headers: sent with every POST (``otlp_headers``).
            batch_bytes: where the forwarder stops a batch (estimated).

        Raises:
            ValueError: a bad endpoint, an empty host, a timeout <= 0 or
                a batch_bytes below 1.
        """
        if not host:
            raise ValueError("host is empty: set LIVEMON_HOST")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be at least 1")
        self.batch_bytes = batch_bytes
        self.post_limit_bytes = MAX_POST_BYTES
        self.endpoint = traces_endpoint(endpoint)
        self.host = host
        self.version = version
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.spans_sent = self.spans_rejected = self.rows_left_out = 0
        self.spans_too_large = 0
        self._taken: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def ship(self, source: str, rows: Rows) -> None:
        """POST the spans of one batch of ``source`` rows, in requests of
        at most ``MAX_SPANS_PER_POST``, skipping rows already taken.

        Raises:
            DestinationError: the collector could not take them (see
                ``_otlp_http.post``); the requests before it stay taken.
                Permanent for a source it does not take.
        """
        encoder = _ENCODERS.get(source)
        if encoder is None:
            raise DestinationError(
                f"otlp takes {self.sources}, not {source!r}", permanent=True
            )
        ids = rows.columns["id"]
        # Rows below this batch are behind the mark now: forget them.
        taken = {i for i in self._taken.get(source, ()) if i >= ids[0]}
        self._taken[source] = taken
        todo = [n for n, row_id in enumerate(ids) if row_id not in taken]
        for first in range(0, len(todo), MAX_SPANS_PER_POST):
            part = todo[first : first + MAX_SPANS_PER_POST]
            self._send(encoder, rows, part, taken)

    def _send(
        self, encoder: _Encoder, rows: Rows, part: list[int], taken: set[int]
    ) -> None:
        """POST the spans of the rows at indices ``part``, then add their
        ids to ``taken``; in halves while the body is above
        ``post_limit_bytes`` or the collector answers 413."""
        columns = {
            name: [values[n] for n in part]
            for name, values in rows.columns.items()
        }
        spans, left_out = encoder(self.host, columns)
        if spans:
            body = encode.export_request(self.host, self.version, spans)
            if len(body) > self.post_limit_bytes and len(part) > 1:
                self._send_halves(encoder, rows, part, taken)
                return
            try:
                self._post(body, len(spans))
            except PayloadTooLarge as exc:
                if len(part) > 1:
                    self._lower_limit(len(body))
                    self._send_halves(encoder, rows, part, taken)
                    return
                self._give_up(len(spans), exc)
        taken.update(rows.columns["id"][n] for n in part)
        with self._lock:
            self.rows_left_out += left_out

    def _send_halves(
        self, encoder: _Encoder, rows: Rows, part: list[int], taken: set[int]
    ) -> None:
        half = len(part) // 2
        self._send(encoder, rows, part[:half], taken)
        self._send(encoder, rows, part[half:], taken)

    def _post(self, body: bytes, spans: int) -> None:
        answer = post(
            self.endpoint,
            body,
            content_type=CONTENT_TYPE,
            timeout_s=self.timeout_s,
            headers=self.headers,
        )
        rejected = self._rejected(answer.body, spans)
        with self._lock:
            self.spans_sent += spans - rejected
            self.spans_rejected += rejected

    def _lower_limit(self, refused_bytes: int) -> None:
        """After a 413 for ``refused_bytes``: smaller bodies from now on,
        so later batches are split before they are sent, not refused."""
        if refused_bytes > self.post_limit_bytes:
            return
        # Once at warning: the halving that follows may lower it again.
        level = (
            logging.WARNING
            if self.post_limit_bytes == MAX_POST_BYTES
            else logging.INFO
        )
        # Never below the smallest batch budget: one 413 for a small body
        # (a proxy's error page) must not cut every later POST to a span.
        self.post_limit_bytes = max(refused_bytes - 1, MIN_BATCH_BYTES)
        logger.log(
            level,
            "%s refused a body of %d bytes as too large (HTTP 413): "
            "sending smaller bodies from now on; raise its body limit (the "
            "OpenTelemetry Collector's otlp receiver: "
            "protocols.http.max_request_body_size) for fewer requests",
            self.endpoint,
            refused_bytes,
        )

    def _give_up(self, spans: int, exc: PayloadTooLarge) -> None:
        """A lone row's spans refused as too large: counted, logged, and
        skipped (the same body would be refused on every retry)."""
        with self._lock:
            self.spans_too_large += spans
        logger.warning(
            "%s; its %d span(s) of one row are skipped (counted in "
            "spans_too_large): raise the collector's body limit (the "
            "OpenTelemetry Collector: protocols.http.max_request_body_size) "
            "to receive such rows",
            exc,
            spans,
        )

    def _rejected(self, body: bytes, sent: int) -> int:
        """Spans an ``ExportTraceServiceResponse`` says it refused.

        A partial success is logged, never retried: the OTLP spec says the
        refused spans would be refused again.
        """
        try:
            answer: Any = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):  # nested past the stack
            return 0  # a 2xx without a JSON body: everything was taken
        partial = (
            answer.get("partialSuccess") if isinstance(answer, dict) else None
        )
        if not isinstance(partial, dict):
            return 0
        try:
            rejected = min(
                max(int(partial.get("rejectedSpans") or 0), 0), sent
            )
        except (TypeError, ValueError, OverflowError):  # 1e999: infinity
            rejected = 0
        # Short: a collector may say the same 64 KiB on every answer.
        message = str(partial.get("errorMessage") or "")[:500]
        if rejected or message:
            logger.warning(
                "%s took %d of %d spans; it refused %d: %s",
                self.endpoint,
                sent - rejected,
                sent,
                rejected,
                message or "(no message)",
            )
        return rejected

    def close(self) -> None:
        """Nothing to release: each POST has its own connection."""
