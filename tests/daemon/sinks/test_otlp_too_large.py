"""
The OTLP sink against real loopback receivers with a body limit: batches
of long texts cut by bytes, a 413 answered by sending halves until the
receiver takes them (every row once), and a row too large even alone
counted, logged and skipped so the rows after it still flow.
"""

from __future__ import annotations

import logging
import pickle

import pytest

from daemon.forward import DestinationError, Forwarder, Rows
from daemon.sinks._otlp_http import PayloadTooLarge
from daemon.sinks.otlp import MAX_POST_BYTES, OtlpDestination
from livemon import Monitor
from tests.daemon.sinks.outbox_rows import columns, request_row
from tests.daemon.sinks.receivers import Receiver, otlp_spans
from tests.daemon.sinks.test_batch_bytes import REASON, add_long_rows, stop
from tests.daemon.sinks.test_forward import FAST, wait_for

HOST = "node-1"
TEXT = "\U0001f642" * 1024  # 4 KiB of UTF-8, 12 KiB escaped in JSON


def _destination(url: str, **options) -> OtlpDestination:
    return OtlpDestination(url, HOST, version="0.1.0", **options)


def _long_rows(first: int, count: int, **change) -> Rows:
    rows = [
        request_row(i, success=0, error=TEXT, override_reason=TEXT, **change)
        for i in range(first, first + count)
    ]
    return Rows(columns(rows), first + count - 1)


def _span_ids(receiver: Receiver) -> list[str]:
    return [s["spanId"] for b in receiver.accepted for s in otlp_spans(b)]


class TestForwardedByBytes:
    def test_long_texts_are_cut_into_batches_by_bytes(self, store, receiver):
        """60 rows of two 4 KiB texts, with a 64 KiB budget: the
        forwarder hands the sink batches of 8 long rows at most (one POST
        each), so the receiver sees many small requests, every span once;
        the 250 ordinary rows before them fill the first."""
        add_long_rows(store, 60)
        otlp = _destination(receiver.url, batch_bytes=64 * 2**10)
        forwarder = Forwarder(store.path, otlp, backoff=FAST, idle_s=0.02)
        forwarder.start()
        try:
            wait_for(lambda: otlp.spans_sent == 310)
        finally:
            assert stop(forwarder)
        assert receiver.refused == []
        sizes = [len(otlp_spans(body)) for body in receiver.accepted]
        long_posts = [
            n
            for body, n in zip(receiver.accepted, sizes, strict=True)
            if REASON.encode() in body
        ]
        # 8 rows of ~8.4 KB reach 64 KiB: 60 rows make 8 POSTs or more.
        assert len(long_posts) >= 60 // 8
        assert max(long_posts[1:]) <= 8
        assert len(set(_span_ids(receiver))) == sum(sizes) == 310


class TestTooLarge:
    def test_a_413_is_split_until_taken_each_row_once(self, receiver):
        """A receiver taking 100 KiB bodies answers 413 to the first
        request of 64 rows (~1.5 MiB): the sink sends halves until each
        fits; every row arrives exactly once, nothing is skipped, and
        the limit it learnt splits the next batch before sending."""
        receiver.max_body_bytes = 100 * 2**10
        otlp = _destination(receiver.url)
        otlp.ship("events", _long_rows(1, 64))
        assert 413 in receiver.answers
        assert receiver.refused == []
        ids = _span_ids(receiver)
        assert len(ids) == len(set(ids)) == 64
        assert max(len(b) for b in receiver.accepted) <= 100 * 2**10
        assert (otlp.spans_sent, otlp.spans_too_large) == (64, 0)
        assert otlp.post_limit_bytes < MAX_POST_BYTES
        answered = len(receiver.answers)
        otlp.ship("events", _long_rows(65, 64))
        assert 413 not in receiver.answers[answered:]
        assert len(set(_span_ids(receiver))) == 128

    def test_one_row_too_large_alone_is_skipped_and_counted(
        self, receiver, caplog
    ):
        """A receiver with a 20 KiB limit takes ordinary rows but no row
        of two 4 KiB emoji texts (~26 KiB of JSON): that one is counted
        in spans_too_large, logged with what to change, and skipped; the
        rows around it arrive once and ship() does not raise."""
        receiver.max_body_bytes = 20 * 2**10
        small = [request_row(i) for i in range(1, 11)]
        huge = request_row(11, success=0, error=TEXT, override_reason=TEXT)
        after = [request_row(i) for i in range(12, 21)]
        rows = Rows(columns([*small, huge, *after]), 20)
        otlp = _destination(receiver.url)
        with caplog.at_level(logging.WARNING, "daemon.sinks.otlp"):
            otlp.ship("events", rows)
        assert (otlp.spans_sent, otlp.spans_too_large) == (19, 1)
        assert otlp.refused() == {"spans_rejected": 0, "spans_too_large": 1}
        assert len(set(_span_ids(receiver))) == 19
        assert "max_request_body_size" in caplog.text
        assert "HTTP 413" in caplog.text
        # Taken: shipping the batch again posts nothing more.
        posts = len(receiver.answers)
        otlp.ship("events", rows)
        assert len(receiver.answers) == posts

    def test_through_the_forwarder_the_mark_moves_past_it(
        self, store, receiver
    ):
        """A huge row in the outbox does not hold the sink: with a 6 KiB
        limit every long row is skipped and counted, every ordinary row
        arrives once, and the mark reaches the last row."""
        add_long_rows(store, 3)
        receiver.max_body_bytes = 6 * 2**10
        otlp = _destination(receiver.url)
        forwarder = Forwarder(store.path, otlp, backoff=FAST, idle_s=0.02)
        forwarder.start()
        try:
            wait_for(lambda: forwarder.figures()["shipped_rows"] == 253)
        finally:
            assert stop(forwarder)
        assert (otlp.spans_sent, otlp.spans_too_large) == (250, 3)
        assert len(set(_span_ids(receiver))) == 250
        assert forwarder.figures()["failures"] == 0
        assert forwarder.marks()[1]["events"] == 253

    def test_other_failures_while_splitting_still_retry(self, receiver):
        """A 503 on a half is retryable as ever; the retry sends only
        the halves not taken, so each row still arrives once."""
        receiver.max_body_bytes = 100 * 2**10
        otlp = _destination(receiver.url)
        receiver.script.append((503, {}, b""))  # the first half
        with pytest.raises(DestinationError) as caught:
            otlp.ship("events", _long_rows(1, 8))
        assert not caught.value.permanent
        otlp.ship("events", _long_rows(1, 8))
        ids = _span_ids(receiver)
        assert len(ids) == len(set(ids)) == 8

    def test_payload_too_large_pickles_as_itself(self):
        """It crosses processes with its type and data."""
        error = PayloadTooLarge("HTTP 413", permanent=True)
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is PayloadTooLarge
        assert (str(again), again.permanent) == ("HTTP 413", True)


def test_a_real_daemon_splits_for_a_small_receiver(start_daemon, daemon_env):
    """End to end: coordinators record failed requests with 4 KiB error
    texts; the daemon, with ``otlp_batch_bytes`` at 64 KiB, posts to a
    receiver that takes 48 KiB bodies: it answers 413 at first, the
    daemon sends halves, and every request's and run's span arrives
    exactly once, in bodies the receiver takes."""
    receiver = Receiver(check=otlp_spans)
    receiver.max_body_bytes = 48 * 2**10
    texts = [f"{n} " + "x" * 4000 for n in range(4)]
    try:
        env = daemon_env | {
            "LIVEMON_OTLP_ENDPOINT": receiver.url,
            "LIVEMON_OTLP_BATCH_BYTES": str(64 * 2**10),
            "LIVEMON_HOST": HOST,
        }
        daemon = start_daemon(env)
        receiver.stop()  # until all are stored: then batches are full
        with Monitor(env["LIVEMON_RING"]) as monitor:
            for i in range(100):
                with monitor.request(f"q{i}", category="code") as ctx:
                    ctx.log_agent("coder", success=False, error=texts[i % 4])
                    ctx.log_execution(
                        actual_agents=["coder"],
                        success=False,
                        error=texts[(i + 1) % 4],
                    )
        daemon.wait_until(lambda: daemon.count() == 100)
        runs = "SELECT count(*) FROM agent_runs"
        daemon.wait_until(lambda: daemon.count(runs) == 100)
        receiver.start()
        receiver.wait_for(lambda: len(_span_ids(receiver)) >= 200, 60)
        assert daemon.stop() == 0
    finally:
        receiver.stop()
    ids = _span_ids(receiver)
    assert len(ids) == len(set(ids)) == 200
    assert receiver.refused == []
    assert 413 in receiver.answers
    assert max(len(b) for b in receiver.accepted) <= 48 * 2**10
