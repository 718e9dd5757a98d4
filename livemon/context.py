"""
One request's monitoring context: the hot path.

The ``log_*`` calls only keep their arguments; ``end`` checks them all,
turns text into label ids and writes one packed record.  Doing the work
once, inline, keeps a whole request to a few microseconds (see bench/).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from livemon import record as rec
from livemon.exceptions import InvalidField

if TYPE_CHECKING:
    from livemon.monitor import Monitor

_NAN = float("nan")
_INF = float("inf")
_PADS = {n: (rec.NO_LABEL,) * n for n in (rec.MAX_AGENTS, rec.MAX_DOMAINS)}
_PACKED_PADS = {n: rec.LIST_STRUCTS[n].pack(*_PADS[n]) for n in _PADS}
_SHORT_NAME_CHARS = rec.MAX_NAME_BYTES // 4  # cannot exceed the byte limit
_REQUEST = int(rec.EventType.REQUEST)
_perf_ns = time.perf_counter_ns
_crc32 = zlib.crc32
_pack = rec.SCALARS_STRUCT.pack


def query_hash(query: str) -> int:
    """Return the signed 64-bit hash stored instead of a query's text.

    Two CRC-32s with different seeds: stable across processes and about
    3x cheaper than blake2b here (0.6 vs 1.7 us); it identifies repeated
    queries, it is not meant to resist an attacker.
    """
    data = query.encode()
    return ((_crc32(data, 0x9E3779B9) << 32) | _crc32(data)) - (1 << 63)


class RequestContext:
    """Everything known about one request; one record is written at ``end``.

    The ``log_*`` methods take keyword arguments only; each call sets all
    of its fields (a later call of the same method wins).  Values are
    checked at ``end`` (or at once in strict mode): a bad value is stored
    as unknown and counted in ``monitor.counters.invalid``, or raises
    ``InvalidField`` naming the field in strict mode.

    ``overhead_ns`` in the record is the time spent creating the context
    and in ``end``; the ``log_*`` calls only store their arguments.
    """

    # Class-level defaults: "not logged", so creating a context is cheap.
    _ended = False
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

    def __init__(
        self, monitor: Monitor, query: str, category: str | None = None
    ) -> None:
        start = _perf_ns()
        self._monitor = monitor
        self._query = query
        self._query_category = category
        self.request_id: int = next(monitor._request_ids)
        self.timestamp_ns = time.time_ns()
        if monitor.strict:
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
        if unknown or self._monitor.strict:
            self._refuse(unknown)
            self._label("category", category)
            self._labels("domains", domains, rec.MAX_DOMAINS)
            self._int("complexity", complexity, 32767, rec.UNKNOWN_FLAG)

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
        if unknown or self._monitor.strict:
            self._refuse(unknown)
            self._labels("suggested_agents", suggested_agents, rec.MAX_AGENTS)
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
        if unknown or self._monitor.strict:
            self._refuse(unknown)
            self._labels("actual_agents", actual_agents, rec.MAX_AGENTS)
            self._number("execution_time_ms", execution_time_ms, _INF)
            self._flag("success", success)
            self._text("error", error)
            self._int("token_count", token_count, 2**62, rec.UNKNOWN_COUNT)
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
        if unknown or self._monitor.strict:
            self._refuse(unknown)
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
        if unknown or self._monitor.strict:
            self._refuse(unknown)
            self._flag("accepted", accepted)
            self._text("override_reason", override_reason)

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
        self._ended = True
        if error is not None:
            self._error = error
            if self._success is None:
                self._success = False
        # Each field's common case is checked inline (a method call per
        # field would double the cost); anything else takes the slow path
        # method, which validates, counts or raises.
        ids = self._monitor._label_ids
        qc, ic, st = (
            self._query_category,
            self._intent_category,
            self._strategy,
        )
        cx, conf, ms = self._complexity, self._confidence, self._execution_ms
        acc, ok, score = self._accepted, self._success, self._score
        tc, cv, tp = self._task_completed, self._code_valid, self._tests_passed
        tok, kb = self._tokens, self._context_kb
        ov, err = self._override, self._error
        packed = (
            _pack(
                self.timestamp_ns,
                self.request_id,
                self._monitor.pid,
                _REQUEST,
                self._checked_query(),
                0
                if qc is None
                else (
                    (type(qc) is str and ids.get(qc))
                    or self._label("category", qc)
                ),
                -1
                if cx is None
                else (
                    cx
                    if type(cx) is int and 0 <= cx <= 32767
                    else self._int("complexity", cx, 32767, -1)
                ),
                0
                if ic is None
                else (
                    (type(ic) is str and ids.get(ic))
                    or self._label("category", ic)
                ),
                0
                if st is None
                else (
                    (type(st) is str and ids.get(st))
                    or self._label("strategy", st)
                ),
                _NAN
                if conf is None
                else (
                    conf
                    if type(conf) is float and 0.0 <= conf <= 1.0
                    else self._number("confidence", conf, 1.0)
                ),
                -1
                if acc is None
                else (
                    1
                    if acc is True
                    else 0
                    if acc is False
                    else self._flag("accepted", acc)
                ),
                0
                if ov is None
                else (
                    (type(ov) is str and ids.get(ov))
                    or self._text("override_reason", ov)
                ),
                _NAN
                if ms is None
                else (
                    ms
                    if type(ms) is float and 0.0 <= ms < _INF
                    else self._number("execution_time_ms", ms, _INF)
                ),
                -1
                if ok is None
                else (
                    1
                    if ok is True
                    else 0
                    if ok is False
                    else self._flag("success", ok)
                ),
                0
                if err is None
                else (
                    (type(err) is str and ids.get(err))
                    or self._text("error", err)
                ),
                _NAN
                if score is None
                else (
                    score
                    if type(score) is float and 0.0 <= score <= 1.0
                    else self._number("score", score, 1.0)
                ),
                -1
                if tc is None
                else (
                    1
                    if tc is True
                    else 0
                    if tc is False
                    else self._flag("task_completed", tc)
                ),
                -1
                if cv is None
                else (
                    1
                    if cv is True
                    else 0
                    if cv is False
                    else self._flag("code_valid", cv)
                ),
                -1
                if tp is None
                else (
                    1
                    if tp is True
                    else 0
                    if tp is False
                    else self._flag("tests_passed", tp)
                ),
                -1
                if tok is None
                else (
                    tok
                    if type(tok) is int and 0 <= tok <= 2**62
                    else self._int("token_count", tok, 2**62, -1)
                ),
                _NAN
                if kb is None
                else (
                    kb
                    if type(kb) is float and 0.0 <= kb < _INF
                    else self._number("context_size_kb", kb, _INF)
                ),
                self._overhead_ns + (_perf_ns() - start),
            )
            + self._labels("domains", self._domains, rec.MAX_DOMAINS)
            + (
                self._labels(
                    "suggested_agents", self._suggested, rec.MAX_AGENTS
                )
            )
            + self._labels("actual_agents", self._actual, rec.MAX_AGENTS)
        )
        return self._monitor._write(packed)

    def __enter__(self) -> RequestContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        self.end(exc if self._error is None else None)

    # -- checks: each returns the value to store ---------------------------

    def _bad(self, field: str, reason: str, unknown: Any) -> Any:
        if self._monitor.strict:
            raise InvalidField(field, reason)
        self._monitor.counters.invalid += 1
        return unknown

    def _refuse(self, unknown: dict[str, Any]) -> None:
        for name in unknown:
            self._bad(name, "unknown keyword argument", None)

    def _checked_query(self) -> int:
        if type(self._query) is str:
            return query_hash(self._query)
        return int(
            self._bad("query", f"must be a str, not {_short(self._query)}", 0)
        )

    def _flag(self, field: str, value: Any) -> int:
        if value is None:
            return -1
        if value is True:
            return 1
        if value is False:
            return 0
        return int(
            self._bad(
                field, f"must be True, False or None, not {_short(value)}", -1
            )
        )

    def _int(self, field: str, value: Any, high: int, unknown: int) -> int:
        if value is None:
            return unknown
        if type(value) is int and 0 <= value <= high:
            return value
        return int(
            self._bad(
                field,
                f"must be an int in 0..{high}, not {_short(value)}",
                unknown,
            )
        )

    def _number(self, field: str, value: Any, high: float) -> float:
        if value is None:
            return _NAN
        number = type(value) is float or type(value) is int
        if number and 0 <= value <= high and value != _INF:
            return float(value)  # NaN fails the comparisons above
        bound = "in [0, 1]" if high == 1.0 else "finite and >= 0"
        return float(
            self._bad(
                field, f"must be a number {bound}, not {_short(value)}", _NAN
            )
        )

    def _label(self, field: str, value: Any) -> int:
        if value is None:
            return rec.NO_LABEL
        label = (
            self._monitor._label_ids.get(value) if type(value) is str else None
        )
        if label is not None:
            return label
        if (
            type(value) is str
            and value
            and (
                len(value) <= _SHORT_NAME_CHARS
                or len(value.encode()) <= rec.MAX_NAME_BYTES
            )
        ):
            return self._monitor.intern(value)
        return int(
            self._bad(
                field,
                f"must be a non-empty str of at most {rec.MAX_NAME_BYTES} "
                f"UTF-8 bytes, not {_short(value)}",
                rec.NO_LABEL,
            )
        )

    def _labels(self, field: str, values: Any, limit: int) -> bytes:
        if values is None:
            return _PACKED_PADS[limit]
        key = tuple(values) if type(values) is list else values
        if type(key) is not tuple:
            self._bad(field, f"must be a list of str, not {_short(values)}", 0)
            return _PACKED_PADS[limit]
        try:
            cached = self._monitor._list_bytes.get(key)
        except TypeError:  # an unhashable item: _label below refuses it
            cached = None
        if cached is not None:
            return cached
        if len(key) > limit:
            self._bad(
                field, f"holds {len(key)} names, at most {limit} allowed", 0
            )
            return _PACKED_PADS[limit]
        ids = [self._label(field, value) for value in key]
        packed = rec.LIST_STRUCTS[limit].pack(*ids, *_PADS[limit][len(ids) :])
        if all(type(v) is str and v in self._monitor._label_ids for v in key):
            self._monitor._list_bytes[key] = packed  # every name announced
        return packed

    def _text(self, field: str, value: Any) -> int:
        if value is None:
            return rec.NO_LABEL
        if isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"
        elif type(value) is not str:
            return int(
                self._bad(
                    field,
                    f"must be a str or an exception, not {_short(value)}",
                    rec.NO_LABEL,
                )
            )
        label = self._monitor._label_ids.get(value)
        if label is not None:
            return label
        return self._monitor.intern(rec.fit_text(value))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
