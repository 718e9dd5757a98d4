"""
Misbehaving destinations, as real servers on loopback: a collector or
webhook that answers garbage, trickles, loops, refuses or goes away, and
clients that abuse the metrics port.  Each must leave the sink shipping
each row once (or counting it as refused) and the daemon bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from daemon.forward import DestinationError, Rows
from daemon.metrics import MetricsServer
from daemon.retry import Backoff
from daemon.sinks.otlp import OtlpDestination
from daemon.sinks.webhook import WebhookDestination
from tests.daemon.sinks.adversaries import (
    answering,
    raw_server,
    read_request,
)
from tests.daemon.sinks.outbox_rows import columns, request_row

HOST = "node-1"


def _otlp(url: str, **options: object) -> OtlpDestination:
    return OtlpDestination(url, HOST, version="0.1.0", **options)  # type: ignore[arg-type]


def _requests(*ids: int) -> Rows:
    return Rows(columns([request_row(i) for i in ids]), last_id=max(ids))


class TestCollectorAnswers:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"partialSuccess":{"rejectedSpans":1e999}}',
            b'{"partialSuccess":{"rejectedSpans":-1e999}}',
            b"[" * 50_000,
            b'{"partialSuccess":' * 20_000,
            b"\xff\xfe garbage \x00",
        ],
        ids=["inf", "-inf", "deep-list", "deep-dict", "binary"],
    )
    def test_a_2xx_with_any_body_is_taken_once(self, body: bytes) -> None:
        # An answer json cannot turn into a count (an infinite number, a
        # nesting deeper than the interpreter's stack) must not fail the
        # ship: the collector took the spans, and a retry posts them twice.
        with raw_server(answering("200 OK", body)) as server:
            sink = _otlp(server.url)
            sink.ship("events", _requests(1, 2, 3))
            sink.ship("events", _requests(1, 2, 3))  # the same batch again
        assert server.connections == 1
        assert sink.spans_sent + sink.spans_rejected == 3

    def test_a_2xx_whose_body_is_torn_is_taken_once(self) -> None:
        # The status line says the collector took the spans; a body cut
        # short (its partial success unknown) must not post them again.
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            read_request(conn)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{"
            )

        with raw_server(handle) as server:
            sink = _otlp(server.url)
            sink.ship("events", _requests(1, 2))
            sink.ship("events", _requests(1, 2))
        assert (server.connections, sink.spans_sent) == (1, 2)

    def test_a_partial_success_message_is_logged_short(self, caplog) -> None:
        # A 60 KB errorMessage on every answer must not put 60 KB in the
        # log per POST.
        text = "x" * 60_000
        body = b'{"partialSuccess":{"errorMessage":"%s"}}' % text.encode()
        with raw_server(answering("200 OK", body)) as server:
            sink = _otlp(server.url)
            with caplog.at_level("WARNING"):
                sink.ship("events", _requests(1))
        [record] = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 0 < len(record.getMessage()) < 1000

    def test_partial_success_naming_more_spans_than_sent(self) -> None:
        body = b'{"partialSuccess":{"rejectedSpans":"900","errorMessage":"x"}}'
        with raw_server(answering("200 OK", body)) as server:
            sink = _otlp(server.url)
            sink.ship("events", _requests(1, 2))
        assert (sink.spans_sent, sink.spans_rejected) == (0, 2)

    def test_a_huge_body_is_read_only_as_far_as_the_bound(self) -> None:
        sent = [0]

        def handle(conn: socket.socket, stop: threading.Event) -> None:
            read_request(conn)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"
            )
            chunk = b"x" * 65536
            while not stop.is_set() and sent[0] < 2**30:
                conn.sendall(chunk)
                sent[0] += len(chunk)

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=5.0)
            sink.ship("events", _requests(1))
        assert sink.spans_sent == 1
        assert sent[0] < 2**28  # closed long before a gigabyte

    def test_a_redirect_loop_is_not_followed(self) -> None:
        with raw_server(
            answering("307 Temporary Redirect", b"", "Location: /v1/traces")
        ) as server:
            sink = _otlp(server.url)
            with pytest.raises(DestinationError, match="307") as caught:
                sink.ship("events", _requests(1))
        assert caught.value.permanent
        assert server.connections == 1

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("Retry-After: 99999999999999999999", 3600.0),
            ("Retry-After: -5", None),
            ("Retry-After: Fri, 31 Dec 1999 23:59:59 GMT", 0.0),
            ("Retry-After: Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
            ("Retry-After: soon", None),
        ],
    )
    def test_retry_after_is_bounded(
        self, header: str, expected: object
    ) -> None:
        with raw_server(answering("503 Busy", b"", header)) as server:
            sink = _otlp(server.url)
            with pytest.raises(DestinationError) as caught:
                sink.ship("events", _requests(1))
        assert caught.value.retry_after == expected
        assert not caught.value.permanent
        # The wait the forwarder takes is bounded by its backoff's slow cap.
        backoff = Backoff(base_s=0.01, cap_s=0.02, permanent_s=0.05)
        assert backoff.delay_s(1, caught.value) <= 0.05


class TestCollectorConnections:
    def test_a_trickling_answer_is_cut_at_the_timeout(self) -> None:
        # A timeout per socket read is not a deadline: one header byte
        # every 0.1 s keeps a POST alive for as long as the server likes,
        # and the sink ships nothing else meanwhile.
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(30):  # 3 s of "X-Slow: aaaa..."
                if stop.wait(0.1):
                    return
                conn.sendall(b"X-Slow: a\r\n")
            conn.sendall(b"Content-Length: 0\r\n\r\n")

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=0.5)
            with pytest.raises(DestinationError, match=r"timed out|deadline"):
                sink.ship("events", _requests(1))
        assert sink.spans_sent == 0

    def test_endless_100_continue_is_cut_at_the_timeout(self) -> None:
        # http.client skips 1xx answers in a loop: a server that sends
        # them for ever never trips a per-read timeout.
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            read_request(conn)
            while not stop.wait(0.01):
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=0.5)
            with pytest.raises(DestinationError, match="timed out"):
                sink.ship("events", _requests(1))

    def test_a_trickling_tls_handshake_is_cut_at_the_timeout(self) -> None:
        # A TLS record of 16 KiB starting a ServerHello, then a byte every
        # 0.1 s: no read times out alone; CPython's ssl bounds the whole
        # handshake by the socket's timeout (before the POST's deadline).
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            conn.recv(65536)
            conn.sendall(b"\x16\x03\x03\x40\x00\x02\x00\x3f\xfc\x03\x03")
            while not stop.wait(0.1):
                conn.sendall(b"\x00")

        with raw_server(handle) as server:
            url = server.url.replace("http:", "https:")
            sink = _otlp(url, timeout_s=0.5)
            with pytest.raises(DestinationError, match="timed out"):
                sink.ship("events", _requests(1))

    def test_a_collector_that_never_answers(self) -> None:
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            read_request(conn)
            stop.wait(5)

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=0.3)
            with pytest.raises(DestinationError) as caught:
                sink.ship("events", _requests(1))
        assert not caught.value.permanent

    def test_closed_mid_request(self) -> None:
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            conn.recv(10)
            conn.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_LINGER,
                b"\x01\x00\x00\x00\x00\x00\x00\x00",
            )

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=2.0)
            with pytest.raises(DestinationError) as caught:
                sink.ship("events", _requests(*range(1, 200)))
        assert not caught.value.permanent

    def test_https_given_to_a_plain_server(self) -> None:
        with raw_server(answering("200 OK", b"")) as server:
            sink = _otlp(server.url.replace("http:", "https:"), timeout_s=0.5)
            with pytest.raises(DestinationError):
                sink.ship("events", _requests(1))
        assert sink.spans_sent == 0

    def test_plain_http_given_to_a_tls_server(self) -> None:
        def handle(conn: socket.socket, stop: threading.Event) -> None:
            conn.recv(65536)
            conn.sendall(b"\x15\x03\x03\x00\x02\x02\x46")  # a TLS alert

        with raw_server(handle) as server:
            sink = _otlp(server.url, timeout_s=2.0)
            with pytest.raises(DestinationError):
                sink.ship("events", _requests(1))

    def test_a_name_that_does_not_resolve(self) -> None:
        sink = _otlp("http://no-such-host.invalid:4318", timeout_s=2.0)
        with pytest.raises(DestinationError) as caught:
            sink.ship("events", _requests(1))
        assert not caught.value.permanent


def _alert(i: int) -> dict[str, object]:
    return {
        "id": i, "epoch": 1, "lane": 0, "seq": i,
        "timestamp_ns": 1_790_000_000_000_000_000 + i,
        "action": "quality_alert", "subject": "coder", "message": "m",
        "old_value": 0.9, "new_value": 0.5, "statistic": 3.0,
        "threshold": 2.0, "samples": 40, "window_records": 100,
    }  # fmt: skip


class TestWebhook:
    def test_500_for_ever_keeps_nothing_but_the_batch(self) -> None:
        with raw_server(answering("500 Oops", b"no")) as server:
            sink = WebhookDestination(server.url + "/hook", HOST, fmt="json")
            rows = Rows(columns([_alert(i) for i in range(1, 4)]), last_id=3)
            for _ in range(20):
                with pytest.raises(DestinationError) as caught:
                    sink.ship("alerts", rows)
                assert not caught.value.permanent
        # Each retry re-posts only the first row; nothing was taken.
        assert server.connections == 20
        assert sink.posted == 0
        assert all(not taken for taken in sink._taken.values())

    def test_a_row_refused_as_too_large_is_skipped(self) -> None:
        # One alert refused (413) must not hold every later one for ever.
        statuses = iter(["413 Payload Too Large"])

        def handle(conn: socket.socket, stop: threading.Event) -> None:
            answering(next(statuses, "200 OK"), b"")(conn, stop)

        with raw_server(handle) as server:
            sink = WebhookDestination(server.url + "/hook", HOST, fmt="json")
            rows = Rows(columns([_alert(i) for i in range(1, 4)]), last_id=3)
            sink.ship("alerts", rows)
        assert (sink.posted, sink.refused()) == (2, {"alerts_too_large": 1})
        assert server.connections == 3


class TestMetricsPort:
    def _server(self, port: int = 0) -> MetricsServer:
        from daemon.metrics import DaemonCollector

        collector = DaemonCollector(
            lambda: {"published_at": time.time()}, "/nonexistent/advs.db"
        )
        return MetricsServer(("127.0.0.1", port), collector)

    def _started(self) -> tuple[MetricsServer, int]:
        """A metrics server listening on a free port, and that port."""
        server = self._server()
        server.upkeep()
        assert server.url is not None
        return server, int(server.url.rsplit(":", 1)[1].split("/")[0])

    def test_a_taken_port_is_reported_not_raised(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            server = self._server(taken.getsockname()[1])
            server.upkeep()
            assert server.url is None
            assert "in use" in (server.last_error or "")
            server.stop()

    def test_idle_connections_are_dropped(self, monkeypatch) -> None:
        # Each connection has a thread: 50 clients that connect and send
        # nothing must not hold 50 threads for ever.
        monkeypatch.setattr(MetricsServer, "IDLE_TIMEOUT_S", 0.5)
        server, port = self._started()
        idle = [
            socket.create_connection(("127.0.0.1", port)) for _ in range(50)
        ]
        try:
            for sock in idle:
                sock.settimeout(5)
                assert sock.recv(10) == b""  # the server hung up
        finally:
            for sock in idle:
                sock.close()
            server.stop()

    def test_huge_and_malformed_requests(self) -> None:
        server, port = self._started()
        try:
            for request in (
                b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
                b"\x00\xff\x16\x03 nonsense\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
            ):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.settimeout(5)
                    with contextlib.suppress(OSError):
                        sock.sendall(request)
                    answer = b""
                    with contextlib.suppress(OSError):
                        while chunk := sock.recv(65536):
                            answer += chunk
                    assert not answer.startswith(b"HTTP/1.0 200")
            # Still serving after all that.
            assert b"livemon_up 1.0" in _get_metrics(port, timeout_s=5)
        finally:
            server.stop()

    def test_fifty_scrapes_at_once(self) -> None:
        server, port = self._started()
        answers: list[bytes] = []

        def scrape() -> None:
            answers.append(_get_metrics(port, timeout_s=10))

        threads = [threading.Thread(target=scrape) for _ in range(50)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
        finally:
            server.stop()
        assert len(answers) == 50
        assert all(b"livemon_up 1.0" in a for a in answers)


def _get_metrics(port: int, timeout_s: float) -> bytes:
    """The whole answer to a plain HTTP/1.0 GET of /metrics."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_failures_counter_never_goes_down(store) -> None:
    # A collector that answers 503 three times, then takes everything:
    # /metrics' failure counter keeps the 3 (a counter that fell back to
    # 0 at the first success reads as a reset: rate() shows no failure).
    from daemon.forward import Forwarder
    from daemon.metrics import DaemonCollector

    answers = iter(["503 Busy"] * 3)

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        answering(next(answers, "200 OK"), b"")(conn, stop)

    with raw_server(handle) as server:
        forwarder = Forwarder(
            store.path,
            _otlp(server.url),
            backoff=Backoff(base_s=0.01, cap_s=0.02),
            idle_s=0.02,
        )
        forwarder.start()
        try:
            deadline = time.monotonic() + 30
            while forwarder.figures()["shipped_rows"] < 250:
                assert time.monotonic() < deadline, forwarder.figures()
                time.sleep(0.02)
        finally:
            forwarder.request_stop(time.monotonic() + 5)
            assert forwarder.join(time.monotonic() + 5)
    figures = {"published_at": time.time(), "sinks": [forwarder.figures()]}
    collector = DaemonCollector(lambda: figures, "/nonexistent/advs.db")
    got = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for metric in collector.collect()
        for sample in metric.samples
    }
    assert got[("livemon_sink_failures_total", ("otlp",))] == 3
    assert got[("livemon_sink_consecutive_failures", ("otlp",))] == 0
    assert got[("livemon_sink_last_error_timestamp_seconds", ("otlp",))] > 0
    assert got[("livemon_sink_lag_rows", ("otlp",))] == 0


@pytest.fixture
def ring_name() -> Iterator[str]:
    """This file's rings are ``advs-*``, unlinked after each test."""
    import uuid

    from tests.conftest import unlink_rings

    name = f"advs-{uuid.uuid4().hex[:12]}"
    yield name
    unlink_rings(name)


def test_a_daemon_with_silent_destinations_drains(daemon_env, start_daemon):
    # A collector that takes the POST and never answers (and a webhook
    # that would trickle, idle here: the demo raises no alert): the drain
    # stores every record, status shows nothing shipped, and the stop is
    # bounded although the OTLP forwarder is inside its POST.
    from tests.daemon.conftest import coordinators, recorded
    from tests.daemon.sinks.test_clickhouse import wait_for

    def silent(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        stop.wait(30)

    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.5):
            conn.sendall(b"X: y\r\n")

    with raw_server(silent) as otlp, raw_server(trickle) as hook:
        env = dict(
            daemon_env,
            LIVEMON_OTLP_ENDPOINT=otlp.url,
            LIVEMON_ALERT_WEBHOOK_URL=hook.url + "/hook",
            LIVEMON_HOST="advs",
        )
        run = start_daemon(env)
        total = recorded(coordinators(env, 2, 300))
        wait_for(lambda: run.count() == total)
        sinks = {s["sink"]: s for s in run.status().get("sinks") or []}
        wait_for(lambda: otlp.connections >= 1)
        assert set(sinks) == {"otlp", "webhook"}
        assert sinks["otlp"]["shipped_rows"] == 0
        started = time.monotonic()
        assert run.stop() == 0
        assert time.monotonic() - started < 20
