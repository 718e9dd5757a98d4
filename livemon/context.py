"""
One request's monitoring context: the hot path.

The ``log_*`` calls only keep their arguments; ``end`` checks them all,
turns text into label ids and writes one packed record (then one per agent
run, ``log_agent``: see ``livemon.agents``).  Doing the work
once, inline, keeps a whole request to a few microseconds (see bench/).
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterable
from typing import Any

from livemon import agents as _agents
from livemon import record as rec
from livemon._checks import (
    INT64_OFFSET,
    QUERY_HASH_SEED,
    FieldChecks,
    hash_bytes,
    read_strictly,
)
from livemon._compiled import compiled_pack
from livemon.exceptions import LivemonError
from livemon.sink import Sink

__all__ = ["RequestContext", "query_hash"]

_MAX_COMPLEXITY = 2**15 - 1  # query_complexity is an int16
_MAX_TOKENS = 2**62  # far above any real count, well inside int64
_NO_LABEL = rec.NO_LABEL  # module constants: the hot path's cheapest loads
_UNKNOWN_FLAG = rec.UNKNOWN_FLAG
_UNKNOWN_COUNT = rec.UNKNOWN_COUNT
_NAN = float("nan")
_INF = float("inf")
_REQUEST = int(rec.EventType.REQUEST)
_perf_ns = time.perf_counter_ns
_time_ns = time.time_ns
_pack = rec.SCALARS_STRUCT.pack
_crc32 = zlib.crc32
_SEED = QUERY_HASH_SEED
_OFFSET = INT64_OFFSET

_fast_pack = compiled_pack()  # None: the Python path alone
COMPILED = _fast_pack is not None
"""Whether requests are packed by the compiled fast path."""


def query_hash(query: str) -> int:
    """Return the signed 64-bit hash stored instead of a query's text.

    Two CRC-32s with different seeds: stable across processes and about
    3x cheaper than blake2b here (0.6 vs 1.7 us); it identifies repeated
    queries, it is not meant to resist an attacker.  Lone surrogates are
    hashed in their escaped form (``record.TEXT_ERRORS``).
    """
    return hash_bytes(rec.encode_text(query))


class RequestContext(FieldChecks):
    """Everything known about one request; one record is written at ``end``.

    The ``log_*`` methods take keyword arguments only; each call sets all
    of its fields (a later call of the same method wins).  Values are
    checked at ``end`` (or at once in strict mode): a bad value is stored
    as unknown and counted in ``monitor.counters.invalid``, or raises
    ``InvalidField`` naming the field in strict mode.  Default mode never
    raises, whatever the values.

    Accepted: numbers as ``int``/``float`` or any ``numbers.Real`` (numpy
    scalars included; counts need ``numbers.Integral``), finite and in
    range; a bool where a number is meant is refused.  Flags as ``True``,
    ``False``, ``np.bool_`` or the ints 0 and 1.  Text as ``str``, a
    subclass (say a ``StrEnum`` member) by its value (lone surrogates are
    stored escaped and counted in ``texts_escaped``).  A request started
    before a fork is written by the parent only (``ended_in_forked_child``
    counts a child's ``end`` of it).

    ``overhead_ns`` in the record is the time spent creating the context
    and in ``end``; the ``log_*`` calls only store their arguments.
    """

    # Class-level defaults: "not logged", so creating a context is cheap.
    _ended = False
    _strict = False
    _checked = False  # log_* calls take the slow path: strict, or ended
    _intent_category: Any = None
    _domains: Any = None
    _complexity: Any = None
    _suggested: Any = None
    _strategy: Any = None
    _confidence: Any = None
    _actual: Any = None
    _execution_ms: Any = None
    _success: Any = None
    _error: Any = None
    _tokens: Any = None
    _context_kb: Any = None
    _score: Any = None
    _task_completed: Any = None
    _code_valid: Any = None
    _tests_passed: Any = None
    _accepted: Any = None
    _override: Any = None
    _agent_runs: list[_agents.AgentRun] | None = None

    def __init__(
        self, sink: Sink, query: str, category: str | None = None
    ) -> None:
        start = _perf_ns()
        self._sink = sink
        self._query = query
        self._query_category = category
        self.request_id: int = next(sink.request_ids)
        self.timestamp_ns = _time_ns()
        self._pid = sink.pid  # a forked child's copy is not its request
        if sink.strict:
            self._strict = self._checked = True
            self._checked_query()
            self._label("category", category)
        self._overhead_ns = _perf_ns() - start

    def log_intent(
        self,
        *,
        category: str | None = None,
        domains: Iterable[str] | None = None,
        complexity: int | None = None,
        **unknown: Any,
    ) -> None:
        """Record the intent classification (complexity: int 0..32767)."""
        self._intent_category = category
        self._domains = domains
        self._complexity = complexity
        if (unknown or self._checked) and self._screen("log_intent", unknown):
            with read_strictly("log_intent"):
                self._label("category", category)
                self._labels("domains", domains, rec.MAX_DOMAINS)
                self._int("complexity", complexity, _MAX_COMPLEXITY)

    def log_routing(
        self,
        *,
        suggested_agents: Iterable[str] | None = None,
        strategy: str | None = None,
        confidence: float | None = None,
        **unknown: Any,
    ) -> None:
        """Record the routing decision (confidence in [0, 1])."""
        self._suggested = suggested_agents
        self._strategy = strategy
        self._confidence = confidence
        if (unknown or self._checked) and self._screen("log_routing", unknown):
            with read_strictly("log_routing"):
                self._labels(
                    "suggested_agents", suggested_agents, rec.MAX_AGENTS
                )
                self._label("strategy", strategy)
                self._number("confidence", confidence, 1.0)

    def log_execution(
        self,
        *,
        actual_agents: Iterable[str] | None = None,
        execution_time_ms: float | None = None,
        success: bool | None = None,
        error: str | BaseException | None = None,
        token_count: int | None = None,
        context_size_kb: float | None = None,
        **unknown: Any,
    ) -> None:
        """Record how the agents ran (durations and sizes finite, >= 0)."""
        self._actual = actual_agents
        self._execution_ms = execution_time_ms
        self._success = success
        self._error = error
        self._tokens = token_count
        self._context_kb = context_size_kb
        if (unknown or self._checked) and self._screen(
            "log_execution", unknown
        ):
            with read_strictly("log_execution"):
                self._labels("actual_agents", actual_agents, rec.MAX_AGENTS)
                self._number("execution_time_ms", execution_time_ms, _INF)
                self._flag("success", success)
                self._text("error", error)
                self._int("token_count", token_count, _MAX_TOKENS)
                self._number("context_size_kb", context_size_kb, _INF)

    def log_quality(
        self,
        *,
        score: float | None = None,
        task_completed: bool | None = None,
        code_valid: bool | None = None,
        tests_passed: bool | None = None,
        **unknown: Any,
    ) -> None:
        """Record the quality assessment (score in [0, 1])."""
        self._score = score
        self._task_completed = task_completed
        self._code_valid = code_valid
        self._tests_passed = tests_passed
        if (unknown or self._checked) and self._screen("log_quality", unknown):
            with read_strictly("log_quality"):
                self._number("score", score, 1.0)
                self._flag("task_completed", task_completed)
                self._flag("code_valid", code_valid)
                self._flag("tests_passed", tests_passed)

    def log_acceptance(
        self,
        *,
        accepted: bool | None = None,
        override_reason: str | None = None,
        **unknown: Any,
    ) -> None:
        """Record whether the suggested routing was accepted, and why not."""
        self._accepted = accepted
        self._override = override_reason
        if (unknown or self._checked) and self._screen(
            "log_acceptance", unknown
        ):
            with read_strictly("log_acceptance"):
                self._flag("accepted", accepted)
                self._text("override_reason", override_reason)

    def log_agent(
        self,
        name: str,
        *,
        execution_time_ms: float | None = None,
        success: bool | None = None,
        error: str | BaseException | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        quality_score: float | None = None,
        outcome: str | rec.AgentOutcome | None = None,
        **unknown: Any,
    ) -> None:
        """Record one agent's own run; call it once per agent that ran.

        Each call adds a run (up to ``MAX_AGENT_RUNS``, beyond counted in
        ``agent_runs_over_limit``), written at ``end`` as its own record
        right after the request's.  ``outcome``: ``"selected"`` (its
        output was used), ``"merged"``, ``"discarded"``, ``"cancelled"``
        (stopped because a sibling won: neither a failure nor a latency
        sample), an ``AgentOutcome``, or None.  Checks as the other calls
        (durations, tokens >= 0; quality_score in [0, 1]).
        """
        run = (
            name,
            execution_time_ms,
            success,
            error,
            input_tokens,
            output_tokens,
            quality_score,
            outcome,
        )
        if unknown or self._checked:
            self._screen("log_agent", unknown)  # counts a late call
            if self._ended:
                return
        if self._agent_runs is None:
            self._agent_runs = []
        _agents.keep_run(self, self._agent_runs, run)

    def end(self, error: str | BaseException | None = None) -> bool:
        """Write the record; return whether it reached the ring.

        Args:
            error: an error to record (overrides one logged before); a
                request with an error and no logged success is a failure.

        Raises:
            InvalidField, MonitoringUnavailable: in strict mode only.
        """
        start = _perf_ns()
        if self._ended:
            return False
        self._ended = self._checked = True  # later log_* calls are counted
        if self._pid != self._sink.pid:
            return self._inherited()
        if error is not None:
            self._error = error
            if self._success is None:
                self._success = False
        try:
            packed = _fast_pack(self, start) if _fast_pack else None
            if packed is None:  # not the common case: checked in Python
                packed = self._scalars(start) + self._lists()
        except LivemonError:
            raise
        except Exception as exc:  # a value's own method raised
            # Every value is checked field by field; this is the last net
            # for a hostile object (say a __hash__ that raises) in default
            # mode: monitoring never breaks the request.
            if self._agent_runs:  # lost with it: no request to link to
                self._sink.counters.agent_runs_failed += len(self._agent_runs)
            return self._unwritable(exc)
        try:
            stored = self._sink.write(packed)
        finally:  # a strict write error too: the runs are stored or counted
            if self._agent_runs:  # right after the request's record
                _agents.write_runs(
                    self,
                    self._agent_runs,
                    packed,
                    self.timestamp_ns,
                    self.request_id,
                )
        return stored

    def _inherited(self) -> bool:
        """End, in a forked child, a request its parent started: the
        parent's copy is the request's record (and its runs'), so the
        child writes nothing and counts it in ``ended_in_forked_child``."""
        self._sink.counters.ended_in_forked_child += 1
        return False

    def __enter__(self) -> RequestContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        if exc is None:
            self.end()
            return
        # The caller's exception propagates unchanged: even in strict mode
        # the record is checked leniently, and no error of ours replaces it.
        self._strict = False
        # A strict Monitor's write error is counted where it is raised.
        with contextlib.suppress(LivemonError):
            self.end(exc if self._error is None else None)

    # -- the record ------------------------------------------------------

    def _scalars(self, start: int) -> bytes:
        # Each field's common case is checked inline (a method call per
        # field would double the cost); anything else takes its checker,
        # which validates, counts or raises.  Flags pack True/False as is.
        # Cold (a request every few ms, caches evicted in between) the
        # cost is the Python run, so the query hash and the label lookups
        # are inline too: one frame for the whole scalar part.
        sink, query = self._sink, self._query
        ids = sink.label_ids
        qc, ic, st = (
            self._query_category,
            self._intent_category,
            self._strategy,
        )
        ov, err = self._override, self._error
        cx, conf, ms = self._complexity, self._confidence, self._execution_ms
        acc, ok, score = self._accepted, self._success, self._score
        tc, cv, tp = self._task_completed, self._code_valid, self._tests_passed
        tok, kb = self._tokens, self._context_kb
        if type(query) is str and query.isascii():  # ASCII encodes as is
            data = query.encode()
            query = ((_crc32(data, _SEED) << 32) | _crc32(data)) - _OFFSET
        else:
            query = self._checked_query()
        return _pack(
            self.timestamp_ns,
            self.request_id,
            sink.pid,
            _REQUEST,
            query,
            _NO_LABEL
            if qc is None
            else (type(qc) is str and ids.get(qc))
            or self._label("category", qc),
            _UNKNOWN_COUNT
            if cx is None
            else cx
            if type(cx) is int and 0 <= cx <= _MAX_COMPLEXITY
            else self._int("complexity", cx, _MAX_COMPLEXITY),
            _NO_LABEL
            if ic is None
            else (type(ic) is str and ids.get(ic))
            or self._label("category", ic),
            _NO_LABEL
            if st is None
            else (type(st) is str and ids.get(st))
            or self._label("strategy", st),
            _NAN
            if conf is None
            else conf
            if type(conf) is float and 0.0 <= conf <= 1.0
            else self._number("confidence", conf, 1.0),
            _UNKNOWN_FLAG
            if acc is None
            else acc
            if type(acc) is bool
            else self._flag("accepted", acc),
            _NO_LABEL
            if ov is None
            else (type(ov) is str and ids.get(ov))
            or self._text("override_reason", ov),
            _NAN
            if ms is None
            else ms
            if type(ms) is float and 0.0 <= ms < _INF
            else self._number("execution_time_ms", ms, _INF),
            _UNKNOWN_FLAG
            if ok is None
            else ok
            if type(ok) is bool
            else self._flag("success", ok),
            _NO_LABEL
            if err is None
            else (type(err) is str and ids.get(err))
            or self._text("error", err),
            _NAN
            if score is None
            else score
            if type(score) is float and 0.0 <= score <= 1.0
            else self._number("score", score, 1.0),
            _UNKNOWN_FLAG
            if tc is None
            else tc
            if type(tc) is bool
            else self._flag("task_completed", tc),
            _UNKNOWN_FLAG
            if cv is None
            else cv
            if type(cv) is bool
            else self._flag("code_valid", cv),
            _UNKNOWN_FLAG
            if tp is None
            else tp
            if type(tp) is bool
            else self._flag("tests_passed", tp),
            _UNKNOWN_COUNT
            if tok is None
            else tok
            if type(tok) is int and 0 <= tok <= _MAX_TOKENS
            else self._int("token_count", tok, _MAX_TOKENS),
            _NAN
            if kb is None
            else kb
            if type(kb) is float and 0.0 <= kb < _INF
            else self._number("context_size_kb", kb, _INF),
            self._overhead_ns + (_perf_ns() - start),
        )

    def _lists(self) -> bytes:
        domains, suggested, actual = (
            self._domains,
            self._suggested,
            self._actual,
        )
        if (
            type(domains) is list
            and type(suggested) is list
            and (type(actual) is list)
        ):
            # The common case, three lists seen before: no call per list.
            cached = self._sink.label_lists
            try:
                return (
                    cached[tuple(domains)]
                    + cached[tuple(suggested)]
                    + cached[tuple(actual)]
                )
            except Exception:  # first seen, unhashable or hostile: check
                pass
        return (
            self._labels("domains", domains, rec.MAX_DOMAINS)
            + self._labels("suggested_agents", suggested, rec.MAX_AGENTS)
            + self._labels("actual_agents", actual, rec.MAX_AGENTS)
        )
