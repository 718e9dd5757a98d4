"""
The OTLP destination against a real collector: rotel (PyPI's ``rotel``, a
Rust OpenTelemetry collector) takes livemon's OTLP/JSON and re-exports it as
OTLP/HTTP protobuf to a loopback receiver, which checks what came through.

Marker ``collector`` (extra ``collector``; CI runs it once): rotel's agent
links against the running Python's shared libpython, which builds without
``--enable-shared`` (pyenv's, by default) do not have, and the encoding it
checks is the same on every Python.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
import urllib.request

import pytest

from daemon.forward import Rows
from daemon.sinks import _otlp_encode as encode
from daemon.sinks.otlp import OtlpDestination
from tests.daemon.sinks.outbox_rows import agent_row, columns, request_row
from tests.daemon.sinks.receivers import Receiver, free_port, protobuf_spans

pytestmark = pytest.mark.collector

HOST = "node-1"


@pytest.fixture
def exported():
    """A receiver of protobuf spans, what the collector exports to."""
    server = Receiver(check=protobuf_spans)
    # An empty ExportTraceServiceResponse: everything taken.
    server.default = (200, {"Content-Type": "application/x-protobuf"}, b"")
    yield server
    server.stop()


def _agent() -> pathlib.Path:
    """rotel's collector binary (imported here: the extra is optional)."""
    import rotel

    return pathlib.Path(rotel.__file__).parent / "rotel-agent"


@pytest.fixture
def collector(exported):
    """A rotel collector on loopback: OTLP/HTTP in, OTLP/HTTP protobuf
    out to ``exported``; killed after the test."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(_agent()),
            "start",
            f"--otlp-http-endpoint=127.0.0.1:{port}",
            f"--otlp-grpc-endpoint=127.0.0.1:{free_port()}",
            "--exporter=otlp",
            f"--otlp-exporter-endpoint={exported.url}",
            "--otlp-exporter-protocol=http",
            "--batch-timeout=100ms",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(url, process)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def _wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "rotel-agent exited"
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers: listening
        except OSError:
            time.sleep(0.05)
    raise AssertionError("rotel-agent never listened")


class TestCollector:
    def test_a_real_collector_takes_the_json_and_keeps_every_id(
        self, collector, exported
    ):
        """rotel parses the OTLP/JSON (2xx, no partial refusal) and what
        it exports holds the same trace, span and parent ids, names and
        GenAI attributes: the JSON encoding loses nothing."""
        otlp = OtlpDestination(collector, HOST, version="0.1.0")
        otlp.ship("events", Rows(columns([request_row(1)]), 1))
        runs = [agent_row(1, 1), agent_row(2, 1, agent="reviewer")]
        otlp.ship("agent_runs", Rows(columns(runs), 2))
        assert (otlp.spans_sent, otlp.spans_rejected) == (3, 0)

        def got():
            return [s for b in exported.accepted for s in protobuf_spans(b)]

        exported.wait_for(lambda: len(got()) == 3)
        spans = {s.name: s for s in got()}
        root = spans["invoke_workflow parallel"]
        coder = spans["invoke_agent coder"]
        assert root.trace_id.hex() == encode.trace_id(HOST, 1001)
        assert root.span_id.hex() == encode.root_span_id(HOST, 1001)
        assert coder.parent_span_id == root.span_id
        assert coder.span_id.hex() == encode.agent_span_id(HOST, 1, 0, 1)
        attrs = {a.key: a.value for a in coder.attributes}
        assert attrs["gen_ai.operation.name"].string_value == "invoke_agent"
        assert attrs["gen_ai.usage.output_tokens"].int_value == 120
        assert attrs["livemon.quality_score"].double_value == 0.9
        assert coder.end_time_unix_nano - coder.start_time_unix_nano == (
            10_000_000
        )
        assert exported.refused == []
