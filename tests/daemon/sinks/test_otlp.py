"""
Tests for daemon/sinks/otlp.py against real HTTP receivers on loopback:
where it posts, what it posts, and how each answer becomes an outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket

import pytest
from click.testing import CliRunner

from daemon.cli import cli, flags_for_child
from daemon.forward import DestinationError, Rows
from daemon.sinks import otlp as otlp_module
from daemon.sinks._otlp_http import parse_retry_after
from daemon.sinks.otlp import (
    MAX_SPANS_PER_POST,
    OtlpDestination,
    from_config,
    otlp_headers,
    traces_endpoint,
)
from livemon.config import load_config
from livemon.exceptions import ConfigError
from tests.daemon.sinks.outbox_rows import agent_row, columns, request_row
from tests.daemon.sinks.receivers import Receiver, otlp_spans

HOST = "node-1"


def _destination(url: str, **options) -> OtlpDestination:
    return OtlpDestination(url, HOST, version="0.1.0", **options)


def _requests(*ids: int) -> Rows:
    return Rows(columns([request_row(i) for i in ids]), last_id=max(ids))


def _answer(status: int, headers=None, body=b""):
    return status, headers or {}, body


class TestEndpoint:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://cloud.example/api/public/otel",
                "https://cloud.example/api/public/otel/v1/traces",
            ),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
            ("http://[::1]:4318", "http://[::1]:4318/v1/traces"),
        ],
    )
    def test_traces_path_is_appended_like_otel_exporters(self, url, expected):
        """A base URL gets ``/v1/traces``, as OTEL_EXPORTER_OTLP_ENDPOINT
        does; a full traces URL is kept."""
        assert str(traces_endpoint(url)) == expected

    @pytest.mark.parametrize(
        "url",
        [
            "127.0.0.1:4318",
            "ftp://h/x",
            "http://",
            "http://u:p@h:1",
            "http://h:x",
        ],
    )
    def test_bad_urls_are_refused_with_an_example(self, url):
        """Anything but http(s)://host[:port][/path] is refused at start."""
        with pytest.raises(
            ValueError, match=re.escape("e.g. http://127.0.0.1:4318")
        ):
            _destination(url)


class TestShip:
    def test_posts_valid_otlp_json_to_v1_traces(self, receiver):
        """Requests and agent runs arrive as valid OTLP/JSON at
        ``/v1/traces``, children pointing at their root."""
        otlp = _destination(receiver.url)
        otlp.ship("events", _requests(1, 2))
        otlp.ship("agent_runs", Rows(columns([agent_row(5, 1)]), 5))
        assert receiver.refused == []
        assert receiver.paths == ["/v1/traces"] * 2
        assert receiver.headers[0]["Content-Type"] == "application/json"
        roots, (child,) = map(otlp_spans, receiver.accepted)
        assert child["parentSpanId"] == roots[0]["spanId"]
        assert otlp.spans_sent == 3

    def test_a_failed_request_retries_only_what_was_not_taken(self, receiver):
        """A big batch goes in several requests; when the second fails,
        the retried batch sends only the requests not taken: every span
        once, none twice."""
        receiver.script.extend([(200, {}, b"{}"), (503, {}, b"")])
        otlp = _destination(receiver.url)
        count = 2 * MAX_SPANS_PER_POST + 10
        batch = _requests(*range(1, count + 1))
        with pytest.raises(DestinationError):
            otlp.ship("events", batch)
        otlp.ship("events", batch)
        sizes = [len(otlp_spans(body)) for body in receiver.accepted]
        assert sizes == [MAX_SPANS_PER_POST, MAX_SPANS_PER_POST, 10]
        ids = [s["spanId"] for b in receiver.accepted for s in otlp_spans(b)]
        assert len(ids) == len(set(ids)) == count
        assert receiver.answers == [200, 503, 200, 200]

    def test_long_texts_go_in_bodies_a_collector_takes(self):
        """512 requests whose texts are all 4 KiB (non-ASCII, escaped
        in JSON) would make a 40 MiB body, which a collector refuses on
        every retry: they go in bodies of at most MAX_POST_BYTES."""

        def check(body: bytes) -> None:
            if len(body) > otlp_module.MAX_POST_BYTES:
                raise ValueError(f"{len(body)} bytes: too large")
            otlp_spans(body)

        receiver = Receiver(check)
        try:
            text = "\U0001f642" * 1024  # 4 KiB of UTF-8
            rows = [
                request_row(
                    i, error=text, override_reason=text, query_category=text,
                    routing_strategy=text, intent_category=text,
                )
                for i in range(1, MAX_SPANS_PER_POST + 1)
            ]  # fmt: skip
            otlp = _destination(receiver.url)
            otlp.ship("events", Rows(columns(rows), MAX_SPANS_PER_POST))
            assert receiver.refused == []
            sent = [s for b in receiver.accepted for s in otlp_spans(b)]
            assert len({s["spanId"] for s in sent}) == MAX_SPANS_PER_POST
            assert len(receiver.accepted) > 1
        finally:
            receiver.stop()

    def test_a_batch_of_stage_records_posts_nothing(self, receiver):
        """A batch with no span is done without a request."""
        otlp = _destination(receiver.url)
        rows = Rows(columns([request_row(1, event_type="quality")]), 1)
        otlp.ship("events", rows)
        assert (receiver.answers, otlp.rows_left_out) == ([], 1)

    def test_other_sources_are_a_permanent_error(self, receiver):
        """A source it does not take is a bug to report, not to retry."""
        with pytest.raises(DestinationError) as caught:
            _destination(receiver.url).ship("alerts", _requests(1))
        assert caught.value.permanent


class TestAnswers:
    @pytest.mark.parametrize("status", [429, 503])
    def test_throttled_is_retryable_with_retry_after(self, receiver, status):
        """429 and 503 are retried after the server's Retry-After."""
        receiver.script.append(_answer(status, {"Retry-After": "7"}))
        with pytest.raises(DestinationError) as caught:
            _destination(receiver.url).ship("events", _requests(1))
        assert caught.value.retry_after == 7.0
        assert not caught.value.permanent
        assert f"HTTP {status}" in str(caught.value)

    def test_retry_after_as_an_http_date(self):
        """Retry-After may be a date; the wait is counted from now."""
        date = "Wed, 21 Oct 2015 07:28:00 GMT"
        assert parse_retry_after(date, now_s=1445412470.0) == 10.0
        assert parse_retry_after("soon") is None
        assert parse_retry_after("99999999") == 3600.0

    def test_server_error_is_retryable(self, receiver):
        """A 500 may pass later: retryable, no Retry-After needed."""
        receiver.script.append(_answer(500, body=b"boom"))
        with pytest.raises(DestinationError) as caught:
            _destination(receiver.url).ship("events", _requests(1))
        assert not caught.value.permanent
        assert caught.value.retry_after is None
        assert "boom" in str(caught.value)

    @pytest.mark.parametrize("status", [400, 401, 404])
    def test_other_client_errors_are_permanent(self, receiver, status):
        """4xx other than 408/429 needs a person: permanent, with the
        server's message, so the machinery reports it."""
        body = json.dumps({"code": 3, "message": "bad span"}).encode()
        receiver.script.append(_answer(status, body=body))
        with pytest.raises(DestinationError) as caught:
            _destination(receiver.url).ship("events", _requests(1))
        assert caught.value.permanent
        assert "bad span" in str(caught.value)

    def test_redirect_is_permanent_and_names_the_target(self, receiver):
        """A redirect is not followed (a POST would become a GET): the
        message says which URL to configure."""
        receiver.script.append(
            _answer(308, {"Location": "http://x/v1/traces"})
        )
        with pytest.raises(DestinationError, match="http://x/v1/traces") as c:
            _destination(receiver.url).ship("events", _requests(1))
        assert c.value.permanent

    def test_partial_success_is_counted_and_logged_not_retried(
        self, receiver, caplog
    ):
        """OTLP forbids retrying refused spans: the batch is done, the
        refusal counted and logged with the collector's message."""
        partial = {
            "partialSuccess": {"rejectedSpans": "1", "errorMessage": "too old"}
        }
        receiver.script.append(_answer(200, body=json.dumps(partial).encode()))
        otlp = _destination(receiver.url)
        with caplog.at_level(logging.WARNING, "daemon.sinks.otlp"):
            otlp.ship("events", _requests(1, 2))
        assert (otlp.spans_sent, otlp.spans_rejected) == (1, 1)
        assert "too old" in caplog.text

    def test_receiver_gone_is_retryable(self, receiver):
        """Connection refused is an outage: retryable."""
        receiver.stop()
        with pytest.raises(DestinationError) as caught:
            _destination(receiver.url).ship("events", _requests(1))
        assert not caught.value.permanent

    def test_a_silent_server_times_out(self):
        """A server that takes the connection and never answers costs one
        timeout, then a retryable error: the forwarder thread moves on."""
        with contextlib.closing(socket.socket()) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            port = silent.getsockname()[1]
            otlp = _destination(f"http://127.0.0.1:{port}", timeout_s=0.3)
            with pytest.raises(DestinationError, match="timed out") as caught:
                otlp.ship("events", _requests(1))
        assert not caught.value.permanent


class TestHeaders:
    def test_otel_exporter_headers_are_sent(self, receiver, tmp_path):
        """OTEL_EXPORTER_OTLP_HEADERS (as every OTel exporter reads it;
        the traces-only variable first) reaches the collector, decoded:
        how a Langfuse or a collector's Authorization is given."""
        env = {
            "OTEL_EXPORTER_OTLP_HEADERS": "x-ignored=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": (
                "Authorization=Basic%20cGs6c2s=, x-tenant = a"
            ),
        }
        config = load_config(
            {"db": str(tmp_path / "x.db"), "otlp_endpoint": receiver.url},
            env={},
        )
        otlp = from_config(config, HOST, env=env)
        otlp.ship("events", _requests(1))
        sent = receiver.headers[0]
        assert sent["Authorization"] == "Basic cGs6c2s="
        assert sent["x-tenant"] == "a"
        assert "x-ignored" not in sent

    def test_a_malformed_header_stops_the_daemon_in_one_line(
        self, tmp_path, monkeypatch
    ):
        """Bad headers are a usage error at start (exit 2), no traceback,
        no daemon forwarding without its credentials."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Bearer s3cret")
        monkeypatch.setenv("LIVEMON_RING", f"hdr{os.getpid()}")
        result = CliRunner().invoke(
            cli,
            [
                "start",
                "--foreground",
                f"--db={tmp_path / 'x.db'}",
                "--otlp-endpoint=http://127.0.0.1:9",
            ],
        )
        assert result.exit_code == 2
        assert "key1=value1" in result.output
        assert "Traceback" not in result.output
        assert "s3cret" not in result.output

    def test_a_malformed_header_is_refused_without_its_value(self):
        """A pair without '=' is refused; the value (a secret) is not
        echoed."""
        env = {"OTEL_EXPORTER_OTLP_HEADERS": "Bearer s3cret"}
        with pytest.raises(ValueError, match="key1=value1") as caught:
            otlp_headers(env)
        assert "s3cret" not in str(caught.value)


class TestConfig:
    def test_keys_come_from_the_environment(self, tmp_path):
        """LIVEMON_OTLP_ENDPOINT, LIVEMON_ALERT_WEBHOOK_URL and
        LIVEMON_ALERT_WEBHOOK_FORMAT are read like every setting; both
        sinks are off by default."""
        db = {"db": str(tmp_path / "x.db")}
        assert load_config(db, env={}).otlp_endpoint == ""
        assert load_config(db, env={}).alert_webhook_url == ""
        config = load_config(
            db,
            env={
                "LIVEMON_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "LIVEMON_ALERT_WEBHOOK_URL": "https://hooks.slack.com/x",
                "LIVEMON_ALERT_WEBHOOK_FORMAT": "slack",
            },
        )
        assert config.otlp_endpoint == "http://127.0.0.1:4318"
        assert config.alert_webhook_format == "slack"

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("otlp_endpoint", "127.0.0.1:4318", "http:// or https://"),
            ("alert_webhook_url", "hooks.slack.com/x", "http:// or https://"),
            ("alert_webhook_format", "teams", "one of"),
        ],
    )
    def test_bad_values_refuse_to_start(self, tmp_path, key, value, message):
        """A URL without a scheme or an unknown format is a ConfigError
        at start, not a sink failing for ever."""
        with pytest.raises(ConfigError, match=message):
            load_config({"db": str(tmp_path / "x.db"), key: value}, env={})

    def test_daemon_flags_set_the_keys_and_reach_a_detached_child(
        self, tmp_path
    ):
        """``livemon-daemon start --otlp-endpoint/--alert-webhook-url``:
        a bad value is refused in one line before anything starts, and a
        detached daemon is handed the flags."""
        result = CliRunner().invoke(
            cli,
            [
                "start",
                "--foreground",
                f"--db={tmp_path / 'x.db'}",
                "--otlp-endpoint=127.0.0.1:4318",
            ],
        )
        assert result.exit_code != 0
        assert "http:// or https://" in result.output
        assert "Traceback" not in result.output
        flags = flags_for_child(
            {"otlp_endpoint": "http://c:4318", "alert_webhook_url": "http://w"}
        )
        assert flags == [
            "--otlp-endpoint",
            "http://c:4318",
            "--alert-webhook-url",
            "http://w",
        ]
