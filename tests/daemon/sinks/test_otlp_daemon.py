"""
End to end: a real Monitor records requests with their agent runs, a real
daemon stores and forwards them, and a loopback collector receives the
traces through throttling, errors and an outage.
"""

from __future__ import annotations

import collections

from livemon import Monitor
from tests.daemon.sinks.receivers import Receiver, otlp_spans, sink_figures

HOST = "e2e-host"


def _record(ring: str, first: int, count: int) -> None:
    """``count`` requests, each routed to two agents, one of which fails."""
    with Monitor(ring) as monitor:
        for i in range(first, first + count):
            with monitor.request(f"q{i}", category="code") as ctx:
                ctx.log_routing(strategy="parallel", confidence=0.8)
                ctx.log_agent(
                    "coder",
                    execution_time_ms=4.0,
                    success=True,
                    input_tokens=100 + i,
                    output_tokens=20,
                    outcome="selected",
                )
                ctx.log_agent(
                    "reviewer",
                    execution_time_ms=3.0,
                    success=False,
                    error="timeout",
                    outcome="discarded",
                )
                ctx.log_execution(
                    actual_agents=["coder", "reviewer"],
                    execution_time_ms=5.0,
                    success=True,
                )


def _spans(receiver: Receiver) -> list[dict]:
    return [s for body in receiver.accepted for s in otlp_spans(body)]


class TestTraces:
    def test_every_request_and_run_arrives_once_through_outages(
        self, start_daemon, daemon_env
    ):
        """429 and 503 with Retry-After, then the collector gone while
        requests keep coming: the daemon keeps storing them (its drain
        never waits for the collector), and once it is back every
        request's trace arrives whole, each span id exactly once, the
        children under their root."""
        receiver = Receiver(check=otlp_spans)
        try:
            receiver.script.extend(
                [
                    (429, {"Retry-After": "1"}, b""),
                    (503, {"Retry-After": "1"}, b""),
                ]
            )
            env = daemon_env | {
                "LIVEMON_OTLP_ENDPOINT": receiver.url,
                "LIVEMON_HOST": HOST,
            }
            daemon = start_daemon(env)
            ring = env["LIVEMON_RING"]
            _record(ring, 0, 50)
            receiver.wait_for(lambda: len(_spans(receiver)) == 150)
            assert receiver.answers[:2] == [429, 503]

            receiver.stop()
            _record(ring, 50, 50)
            daemon.wait_until(lambda: daemon.count() == 100)
            daemon.wait_until(
                lambda: sink_figures(daemon, "otlp").get("lag_rows")
            )
            assert "POST" in (
                sink_figures(daemon, "otlp").get("last_error") or ""
            )
            receiver.start()
            receiver.wait_for(lambda: len(_spans(receiver)) >= 300)
            daemon.wait_until(
                lambda: sink_figures(daemon, "otlp").get("lag_rows") == 0
            )
            assert daemon.stop() == 0
        finally:
            receiver.stop()
        spans = _spans(receiver)
        ids = collections.Counter(s["spanId"] for s in spans)
        assert len(spans) == 300 and max(ids.values()) == 1
        assert receiver.refused == []
        roots = {s["spanId"]: s for s in spans if "parentSpanId" not in s}
        children = [s for s in spans if "parentSpanId" in s]
        assert len(roots) == 100 and len(children) == 200
        for child in children:
            root = roots[child["parentSpanId"]]
            assert child["traceId"] == root["traceId"]
        names = collections.Counter(s["name"] for s in children)
        assert names == {
            "invoke_agent coder": 100,
            "invoke_agent reviewer": 100,
        }
        failed = [s for s in children if s.get("status", {}).get("code") == 2]
        assert {s["name"] for s in failed} == {"invoke_agent reviewer"}
        assert all(
            {"key": "error.type", "value": {"stringValue": "timeout"}}
            in s["attributes"]
            for s in failed
        )

    def test_a_restarted_daemon_sends_nothing_again(
        self, start_daemon, daemon_env
    ):
        """The sink's mark survives a restart: what was taken is not
        posted a second time."""
        receiver = Receiver(check=otlp_spans)
        try:
            env = daemon_env | {
                "LIVEMON_OTLP_ENDPOINT": receiver.url,
                "LIVEMON_HOST": HOST,
            }
            daemon = start_daemon(env)
            _record(env["LIVEMON_RING"], 0, 20)
            receiver.wait_for(lambda: len(_spans(receiver)) == 60)
            assert daemon.stop() == 0
            posts = len(receiver.answers)
            again = start_daemon(env)
            _record(env["LIVEMON_RING"], 20, 1)
            receiver.wait_for(lambda: len(_spans(receiver)) == 63)
            assert again.stop() == 0
        finally:
            receiver.stop()
        assert len(receiver.answers) - posts <= 2  # the new request's
