"""
Agent runs: what ``RequestContext.log_agent`` keeps, and how ``end`` checks
and packs each run into an ``AGENT_RUN_DTYPE`` record linked to its request.

A run's checks are the request fields' own (``livemon._checks``): a bad
value is stored unknown and counted in ``invalid``, or raises
``InvalidField`` in strict mode.
"""

from __future__ import annotations

import struct
from typing import Any

from livemon import record as rec
from livemon._checks import FieldChecks, _exact_str, _short, read_strictly
from livemon.exceptions import InvalidField, LivemonError

__all__ = ["OUTCOMES", "AgentRun", "keep_run", "pack_runs", "write_runs"]

OUTCOMES: dict[str, int] = {
    o.name.lower(): int(o) for o in rec.AgentOutcome if o >= 0
}
"""The stored code of each outcome name (``"selected"``, ``"merged"``,
``"discarded"``, ``"cancelled"``); an ``AgentOutcome`` is stored as it is,
None as ``UNKNOWN``."""

_MAX_TOKENS = 2**62
_INF = float("inf")
_NAN = float("nan")
AGENT_RUN_STRUCT = rec.struct_for(rec.AGENT_RUN_DTYPE)
"""Packs one agent run, fields in ``AGENT_RUN_DTYPE`` order."""
_pack = AGENT_RUN_STRUCT.pack
_UNKNOWN = rec.UNKNOWN_FLAG  # also UNKNOWN_COUNT: both -1
_UNKNOWN_OUTCOME = int(rec.AgentOutcome.UNKNOWN)


def _request_field(name: str) -> struct.Struct:
    """Reads one int64 field at its offset in a packed request record."""
    offset = rec.RECORD_DTYPE.fields[name][1]  # type: ignore[index]
    return struct.Struct(f"<{offset}xq")


_CATEGORY = _request_field("query_category")
_INTENT = _request_field("intent_category")
_STRATEGY = _request_field("routing_strategy")

AgentRun = tuple[Any, Any, Any, Any, Any, Any, Any, Any]
"""What ``log_agent`` keeps, unchecked: name, execution_time_ms, success,
error, input_tokens, output_tokens, quality_score, outcome."""


def keep_run(ctx: FieldChecks, runs: list[AgentRun], run: AgentRun) -> None:
    """Keep ``run`` for ``end``, up to ``MAX_AGENT_RUNS`` per request.

    Beyond the limit the run is counted in ``agent_runs_over_limit``,
    never raised (it is a volume, not a wrong value).  In strict mode
    the run is checked now, so the caller learns of a bad value at once.
    """
    if len(runs) >= rec.MAX_AGENT_RUNS:
        ctx._sink.counters.agent_runs_over_limit += 1
        return
    if ctx._strict:
        with read_strictly("log_agent"):
            _pack_run(ctx, run, (0, 0, 0, 0, 0))
    runs.append(run)


def _outcome(ctx: FieldChecks, value: Any) -> int:
    if value is None:
        return int(rec.AgentOutcome.UNKNOWN)
    if isinstance(value, rec.AgentOutcome):
        return int(value)
    text = _exact_str(value)  # a str subclass by its value, as names are
    code = OUTCOMES.get(text) if text is not None else None
    if code is not None:
        return code
    reason = (
        "must be 'selected', 'merged', 'discarded', 'cancelled', an "
        f"AgentOutcome or None, not {_short(value)}"
    )
    return int(ctx._bad("agent.outcome", reason, rec.AgentOutcome.UNKNOWN))


def _pack_run(
    ctx: FieldChecks, run: AgentRun, head: tuple[int, int, int, int, int]
) -> bytes:
    """One run's record; ``head``: timestamp, request id, pid, category
    and strategy label ids, from the request.

    Each field's common case is checked inline, as in ``end()`` (a call
    per field would double the cost); anything else takes its checker.
    """
    name, ms, ok, err, t_in, t_out, score, outcome = run
    ids = ctx._sink.labels.ids
    timestamp, request_id, pid, category, strategy = head
    return _pack(
        timestamp,
        request_id,
        pid,
        (type(name) is str and ids.get(name)) or _agent(ctx, name),
        _UNKNOWN_OUTCOME
        if outcome is None
        else OUTCOMES[outcome]
        if type(outcome) is str and outcome in OUTCOMES
        else _outcome(ctx, outcome),
        category,
        strategy,
        _NAN
        if ms is None
        else ms
        if type(ms) is float and 0.0 <= ms < _INF
        else ctx._number("agent.execution_time_ms", ms, _INF),
        _UNKNOWN
        if ok is None
        else ok
        if type(ok) is bool
        else ctx._flag("agent.success", ok),
        rec.NO_LABEL
        if err is None
        else (type(err) is str and ids.get(err))
        or ctx._text("agent.error", err),
        _UNKNOWN
        if t_in is None
        else t_in
        if type(t_in) is int and 0 <= t_in <= _MAX_TOKENS
        else ctx._int("agent.input_tokens", t_in, _MAX_TOKENS),
        _UNKNOWN
        if t_out is None
        else t_out
        if type(t_out) is int and 0 <= t_out <= _MAX_TOKENS
        else ctx._int("agent.output_tokens", t_out, _MAX_TOKENS),
        _NAN
        if score is None
        else score
        if type(score) is float and 0.0 <= score <= 1.0
        else ctx._number("agent.quality_score", score, 1.0),
    )


def _agent(ctx: FieldChecks, name: Any) -> int:
    if name is None:  # a run must name its agent
        return int(ctx._bad("agent", "must name the agent, not None", 0))
    return ctx._label("agent", name)


def pack_runs(
    ctx: FieldChecks,
    runs: list[AgentRun],
    request: bytes,
    timestamp_ns: int,
    request_id: int,
) -> list[bytes]:
    """Check and pack every run of a request whose record is ``request``.

    The category is the request's intent category, else the category it
    was started with (the one rollups and the feedback loop group by);
    the strategy is its routing strategy.  Raises ``InvalidField`` in
    strict mode only.
    """
    category = (
        _INTENT.unpack_from(request)[0] or (_CATEGORY.unpack_from(request)[0])
    )
    head = (
        timestamp_ns,
        request_id,
        ctx._sink.pid,
        category,
        _STRATEGY.unpack_from(request)[0],
    )
    return [_pack_run(ctx, run, head) for run in runs]


def write_runs(
    ctx: FieldChecks,
    runs: list[AgentRun],
    request: bytes,
    timestamp_ns: int,
    request_id: int,
) -> int:
    """Pack a request's runs and hand them to the sink; return how many
    reached the agents ring (or its spill).

    Never raises in default mode: a value whose own methods raise loses
    the request's runs, counted in ``agent_runs_failed``.

    Raises:
        InvalidField, MonitoringUnavailable: in strict mode only.
    """
    sink = ctx._sink
    try:
        packed = pack_runs(ctx, runs, request, timestamp_ns, request_id)
    except LivemonError:
        raise
    except Exception as exc:  # a hostile value: the last net, as in end()
        if ctx._strict:
            raise InvalidField(
                "agent", f"a value raised {type(exc).__name__} when read"
            ) from exc
        sink.counters.agent_runs_failed += len(runs)
        return 0
    if sink.agents is None:  # a sink without an agents ring (tests)
        sink.counters.agent_runs_unavailable += len(packed)
        return 0
    return sink.agents(packed)
