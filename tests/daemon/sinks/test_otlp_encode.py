"""
Tests for daemon/sinks/_otlp_encode.py: ids from identity, GenAI attributes,
and bodies that a strict OTLP/JSON check, protobuf and oteltap all accept.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request

import pytest
from oteltap import (
    OtelTapHttpProtobufReceiver,
    OtelTapHttpProtobufReceiverSettings,
)

from daemon.sinks import _otlp_encode as encode
from tests.daemon.sinks.outbox_rows import (
    agent_row,
    columns,
    request_row,
)
from tests.daemon.sinks.receivers import (
    InvalidOtlp,
    free_port,
    otlp_spans,
    to_protobuf,
)

HOST = "node-1"


def _attrs(span):
    out = {}
    for item in span["attributes"]:
        ((kind, value),) = item["value"].items()
        if kind == "arrayValue":
            value = [next(iter(v.values())) for v in value["values"]]
        out[item["key"]] = int(value) if kind == "intValue" else value
    return out


def _body(*spans_lists):
    spans = [s for spans in spans_lists for s in spans]
    return encode.export_request(HOST, "0.1.0", spans)


class TestIds:
    def test_ids_depend_on_host_and_identity_only(self):
        """The same identity gives the same ids; another host or record
        another id (so a replay re-sends, and two machines never clash)."""
        assert encode.trace_id(HOST, 7) == encode.trace_id(HOST, 7)
        assert encode.trace_id(HOST, 7) != encode.trace_id("node-2", 7)
        assert encode.trace_id(HOST, 7) != encode.trace_id(HOST, 8)
        assert encode.root_span_id(HOST, 7) != encode.trace_id(HOST, 7)[:16]
        assert encode.agent_span_id(HOST, 1, 0, 5) != encode.agent_span_id(
            HOST, 1, 1, 5
        )
        assert len(encode.trace_id(HOST, -(2**63))) == 32
        assert len(encode.agent_span_id(HOST, 2**40, 63, 2**62)) == 16

    def test_children_find_their_parent_without_a_join(self):
        """Runs shipped apart from their request carry its trace id and
        the root span's id as parent, from ``request_id`` alone."""
        roots, _ = encode.request_spans(HOST, columns([request_row(1)]))
        runs, _ = encode.agent_spans(
            HOST,
            columns([agent_row(1, 1), agent_row(2, 1, agent="reviewer")]),
        )
        (root,) = roots
        assert "parentSpanId" not in root
        assert {r["traceId"] for r in runs} == {root["traceId"]}
        assert {r["parentSpanId"] for r in runs} == {root["spanId"]}
        assert len({r["spanId"] for r in runs}) == 2

    def test_encoding_twice_is_byte_identical(self):
        """A replayed batch is the same bytes: same ids, same times."""
        rows = columns([request_row(i) for i in range(1, 20)])
        first = _body(encode.request_spans(HOST, rows)[0])
        assert first == _body(encode.request_spans(HOST, rows)[0])


class TestSpans:
    def test_root_span_is_the_routing(self):
        """The root is ``invoke_workflow {strategy}`` with livemon's own
        attributes, starting at the request and lasting its execution."""
        (root,), left_out = encode.request_spans(
            HOST, columns([request_row(1)])
        )
        assert left_out == 0
        assert root["name"] == "invoke_workflow parallel"
        assert root["kind"] == encode.SPAN_KIND_INTERNAL
        start, end = (
            int(root["startTimeUnixNano"]),
            int(root["endTimeUnixNano"]),
        )
        assert end - start == 12_500_000
        attrs = _attrs(root)
        assert attrs["gen_ai.operation.name"] == "invoke_workflow"
        assert attrs["livemon.routing_strategy"] == "parallel"
        assert attrs["livemon.query_category"] == "code"
        assert attrs["livemon.confidence"] == 0.75
        assert attrs["livemon.quality_score"] == 0.9
        assert attrs["livemon.agents"] == ["coder", "reviewer"]
        assert attrs["livemon.request_id"] == 1001
        assert attrs["livemon.accepted"] is True
        assert "status" not in root and "error.type" not in attrs

    def test_agent_span_follows_genai_conventions(self):
        """``invoke_agent {name}`` with the GenAI attributes and the
        outcome."""
        (span,), _ = encode.agent_spans(
            HOST, columns([agent_row(3, 1, outcome="merged")])
        )
        assert span["name"] == "invoke_agent coder"
        attrs = _attrs(span)
        assert attrs["gen_ai.operation.name"] == "invoke_agent"
        assert attrs["gen_ai.agent.name"] == "coder"
        assert attrs["gen_ai.provider.name"] == encode.PROVIDER
        assert attrs["gen_ai.usage.input_tokens"] == 300
        assert attrs["gen_ai.usage.output_tokens"] == 120
        assert attrs["livemon.outcome"] == "merged"
        assert (
            int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])
            == 10_000_000
        )

    @pytest.mark.parametrize(
        ("error", "expected"),
        [("timeout", "timeout"), (None, encode.ERROR_OTHER)],
    )
    def test_failure_sets_error_status_and_type(self, error, expected):
        """A failed run is an ERROR span with ``error.type`` (``_OTHER``
        when it recorded no error text), as semconv's error rules say."""
        row = agent_row(1, 1, success=0, error=error)
        (span,), _ = encode.agent_spans(HOST, columns([row]))
        assert span["status"] == {"code": encode.STATUS_ERROR}
        assert _attrs(span)["error.type"] == expected

    def test_unknown_values_are_left_out(self):
        """NULL, NaN and -1 counts are no attribute at all (no fake 0)."""
        row = agent_row(
            1, 1, agent=None, input_tokens=-1, output_tokens=None,
            quality_score=math.nan, execution_time_ms=None, outcome=None,
        )  # fmt: skip
        (span,), _ = encode.agent_spans(HOST, columns([row]))
        attrs = _attrs(span)
        assert span["name"] == "invoke_agent"
        for key in (
            "gen_ai.agent.name",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "livemon.quality_score",
            "livemon.outcome",
        ):
            assert key not in attrs
        assert span["startTimeUnixNano"] == span["endTimeUnixNano"]
        otlp_spans(_body([span]))

    def test_damaged_times_stay_within_fixed64(self):
        """A negative time or an absurd duration (a damaged record) is
        clamped, so no collector refuses the batch for ever."""
        rows = [
            agent_row(1, 1, timestamp_ns=-5),
            agent_row(2, 1, execution_time_ms=1e300),
        ]
        spans, _ = encode.agent_spans(HOST, columns(rows))
        assert spans[0]["startTimeUnixNano"] == "0"
        assert int(spans[1]["endTimeUnixNano"]) == 2**63 - 1
        to_protobuf(_body(spans))  # protobuf's parser takes them

    def test_overflowing_values_never_stall_the_sink(self):
        """A duration whose nanoseconds overflow a float, or an infinite
        or NaN count (a damaged record), encodes: an OverflowError would
        fail the same batch on every retry, for ever."""
        rows = [
            agent_row(1, 1, execution_time_ms=1e303, input_tokens=math.inf),
            agent_row(2, 1, output_tokens=math.nan),
        ]
        spans, _ = encode.agent_spans(HOST, columns(rows))
        assert int(spans[0]["endTimeUnixNano"]) == 2**63 - 1
        assert "gen_ai.usage.input_tokens" not in _attrs(spans[0])
        assert "gen_ai.usage.output_tokens" not in _attrs(spans[1])
        requests = [request_row(1, execution_time_ms=1e303)]
        roots, _ = encode.request_spans(HOST, columns(requests))
        assert int(roots[0]["endTimeUnixNano"]) == 2**63 - 1
        otlp_spans(_body(spans, roots))

    def test_stage_records_and_missing_request_ids_are_counted_out(self):
        """Legacy stage rows and rows without a request id make no span
        and are counted, not silently lost."""
        rows = columns(
            [
                request_row(1),
                request_row(2, event_type="routing"),
                request_row(3, request_id=0),
            ]
        )
        spans, left_out = encode.request_spans(HOST, rows)
        assert (len(spans), left_out) == (1, 2)


class TestBody:
    def test_strict_otlp_json(self):
        """The body passes the strict OTLP/JSON check and protobuf's
        parser, with the resource and the semconv schema URL."""
        roots, _ = encode.request_spans(
            HOST, columns([request_row(i) for i in range(1, 4)])
        )
        runs, _ = encode.agent_spans(
            HOST, columns([agent_row(i, 1, success=0) for i in range(1, 4)])
        )
        body = _body(roots, runs)
        assert len(otlp_spans(body)) == 6
        resource = json.loads(body)["resourceSpans"][0]
        assert resource["schemaUrl"].endswith("/1.41.0")
        assert {"key": "host.name", "value": {"stringValue": HOST}} in (
            resource["resource"]["attributes"]
        )

    def test_oteltap_refuses_otlp_json(self):
        """oteltap takes protobuf only (400 for JSON): why the JSON itself
        is checked by the strict receiver and by rotel, a collector."""
        roots, _ = encode.request_spans(HOST, columns([request_row(1)]))
        port = free_port()

        def post():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/traces",
                _body(roots),
                {"Content-Type": "application/json"},
            )
            try:
                return urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as exc:
                return exc.code

        async def scenario():
            settings = OtelTapHttpProtobufReceiverSettings(http_port=port)
            async with OtelTapHttpProtobufReceiver(settings):
                return await asyncio.to_thread(post)

        assert asyncio.run(scenario()) == 400

    def test_oteltap_receives_the_spans_as_protobuf(self):
        """oteltap, a real OTLP/HTTP protobuf receiver, takes the body
        (converted to protobuf) and yields the spans with their ids and
        attributes (it refuses OTLP/JSON, so JSON is checked above)."""
        roots, _ = encode.request_spans(HOST, columns([request_row(1)]))
        runs, _ = encode.agent_spans(HOST, columns([agent_row(1, 1)]))
        data = to_protobuf(_body(roots, runs))
        port = free_port()

        async def scenario():
            settings = OtelTapHttpProtobufReceiverSettings(http_port=port)
            async with OtelTapHttpProtobufReceiver(settings) as tap:
                # oteltap hands a span only to awaiters already waiting.
                agent = asyncio.create_task(
                    tap.await_trace(
                        lambda s: s.name == "invoke_agent coder", timeout=20
                    )
                )
                root = asyncio.create_task(
                    tap.await_trace(
                        lambda s: s.name.startswith("invoke_workflow"),
                        timeout=20,
                    )
                )
                await asyncio.sleep(0)
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/traces",
                    data,
                    {"Content-Type": "application/x-protobuf"},
                )
                status = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(request, timeout=10).status
                )
                return status, await agent, await root

        status, agent, root = asyncio.run(scenario())
        assert status == 200
        assert agent.parent_span_id == root.span_id
        assert agent.trace_id.hex() == roots[0]["traceId"]
        attrs = {a.key: a.value for a in agent.attributes}
        assert attrs["gen_ai.agent.name"].string_value == "coder"
        assert attrs["gen_ai.usage.input_tokens"].int_value == 300


class TestStrictCheck:
    @pytest.mark.parametrize(
        ("key", "bad"),
        [
            ("traceId", "AAECAwQFBgcICQoLDA0ODw=="),  # base64, not hex
            ("spanId", "0000000000000000"),
            ("kind", "SPAN_KIND_INTERNAL"),  # enums are integers
            ("startTimeUnixNano", "soon"),  # a decimal string
            ("nonsense", 1),
        ],
    )
    def test_the_receiver_refuses_what_otlp_json_forbids(self, key, bad):
        """The test receiver is strict: each rule it checks breaks a body
        that is otherwise the encoder's (so the tests above can fail)."""
        (span,), _ = encode.agent_spans(HOST, columns([agent_row(1, 1)]))
        span[key] = bad
        with pytest.raises(InvalidOtlp):
            otlp_spans(_body([span]))
