"""
One request's monitoring context (the hot path), and what a Monitor hands
to it: a ``Sink`` (its counters, label cache and write).

The ``log_*`` calls only keep their arguments; ``end`` checks them all,
turns text into label ids and writes one packed record.  Doing the work
once, inline, keeps a whole request to a few microseconds (see bench/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from livemon import record as rec
from livemon.exceptions import InvalidField, LivemonError

__all__ = ["Counters", "RequestContext", "Sink", "query_hash"]

_MAX_COMPLEXITY = 2**15 - 1  # query_complexity is an int16
_MAX_TOKENS = 2**62  # far above any real count, well inside int64
_QUERY_HASH_SEED = 0x9E3779B9  # the second CRC's seed: 2**32 / phi
_INT64_OFFSET = 1 << 63  # maps an unsigned 64-bit hash to a signed one
_NO_LABEL = rec.NO_LABEL  # module constants: the hot path's cheapest loads
_UNKNOWN_FLAG = rec.UNKNOWN_FLAG
_UNKNOWN_COUNT = rec.UNKNOWN_COUNT
_NAN = float("nan")
_INF = float("inf")
_PADS = {n: (rec.NO_LABEL,) * n for n in (rec.MAX_AGENTS, rec.MAX_DOMAINS)}
_PACKED_PADS = {n: rec.LIST_STRUCTS[n].pack(*_PADS[n]) for n in _PADS}
# A name this short cannot exceed the byte limit, whatever its characters.
_SHORT_NAME_CHARS = rec.MAX_NAME_BYTES // rec.MAX_BYTES_PER_CHAR
_REQUEST = int(rec.EventType.REQUEST)
_perf_ns = time.perf_counter_ns
_crc32 = zlib.crc32
_pack = rec.SCALARS_STRUCT.pack


def query_hash(query: str) -> int:
    """Return the signed 64-bit hash stored instead of a query's text.

    Two CRC-32s with different seeds: stable across processes and about
    3x cheaper than blake2b here (0.6 vs 1.7 us); it identifies repeated
    queries, it is not meant to resist an attacker.  Lone surrogates are
    hashed in their escaped form (``record.TEXT_ERRORS``).
    """
    data = rec.encode_text(query)
    return (
        (_crc32(data, _QUERY_HASH_SEED) << 32) | _crc32(data)
    ) - _INT64_OFFSET


@dataclasses.dataclass
class Counters:
    """What happened to this process's monitoring, never reset.

    Attributes:
        recorded: records stored in the ring.
        dropped: records lost because the lane was full.
        invalid: field values refused and stored as unknown (wrong type,
            NaN, inf, out of range, a bool where a number is meant, None
            inside a list, an error whose ``str()`` raises).
        unavailable: records lost because no ring could be reached, or
            ended after ``Monitor.close()``.
        lanes_exhausted: records lost because every lane of the ring was
            held by another live process (more processes than lanes).
        failed: records lost to any other monitoring error.
        labels_dropped: label texts that could not be stored at first
            (labels lane full, or no ring); held and retried before the
            next records.
        labels_lost: held label texts given up (more than 1024 waiting):
            records that use them show the id without its text.
        texts_escaped: texts holding lone surrogates, stored with
            ``\\udXXX`` escapes (counted once per text while it is cached).
        logged_after_end: ``log_*`` calls after ``end()``, ignored.
    """

    recorded: int = 0
    dropped: int = 0
    invalid: int = 0
    unavailable: int = 0
    lanes_exhausted: int = 0
    failed: int = 0
    labels_dropped: int = 0
    labels_lost: int = 0
    texts_escaped: int = 0
    logged_after_end: int = 0


class Sink:
    """All a ``RequestContext`` needs of its ``Monitor``, and no more.

    The Monitor owns one and hands it to each context it starts.

    Attributes:
        strict: raise typed errors instead of counting.
        counters: the Monitor's counters.
        labels: the Monitor's label cache.
        write: stores one packed record; returns whether it was stored.
        pid: this process's id, renewed in a forked child.
        request_ids: request ids, from a random base per process.
    """

    __slots__ = ("counters", "labels", "pid", "request_ids", "strict", "write")

    def __init__(
        self,
        *,
        strict: bool,
        counters: Counters,
        labels: rec.LabelCache,
        write: Callable[[bytes], bool],
    ) -> None:
        self.strict = strict
        self.counters = counters
        self.labels = labels
        self.write = write
        self.renew_identity()

    def renew_identity(self) -> None:
        """Take this process's pid and a fresh run of request ids."""
        self.pid = os.getpid()
        self.request_ids = itertools.count((secrets.randbits(31) << 32) + 1)


class RequestContext:
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
    ``False``, ``np.bool_`` or the ints 0 and 1.  Text as ``str`` (lone
    surrogates are stored escaped and counted in ``texts_escaped``).

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

    def __init__(
        self, sink: Sink, query: str, category: str | None = None
    ) -> None:
        start = _perf_ns()
        self._sink = sink
        self._query = query
        self._query_category = category
        self.request_id: int = next(sink.request_ids)
        self.timestamp_ns = time.time_ns()
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
        if (unknown or self._checked) and self._screen(
            "log_execution", unknown
        ):
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
        self._ended = self._checked = True  # later log_* calls are counted
        if error is not None:
            self._error = error
            if self._success is None:
                self._success = False
        try:
            packed = self._scalars(start) + self._lists()
        except LivemonError:
            raise
        except Exception as exc:  # a value's own method raised
            # Every value is checked field by field; this is the last net
            # for a hostile object (say a __hash__ that raises) in default
            # mode: monitoring never breaks the request.
            return self._unwritable(exc)
        return self._sink.write(packed)

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
        category, intent, strategy, override, error = self._text_ids()
        cx, conf, ms = self._complexity, self._confidence, self._execution_ms
        acc, ok, score = self._accepted, self._success, self._score
        tc, cv, tp = self._task_completed, self._code_valid, self._tests_passed
        tok, kb = self._tokens, self._context_kb
        return _pack(
            self.timestamp_ns,
            self.request_id,
            self._sink.pid,
            _REQUEST,
            self._checked_query(),
            category,
            _UNKNOWN_COUNT
            if cx is None
            else cx
            if type(cx) is int and 0 <= cx <= _MAX_COMPLEXITY
            else self._int("complexity", cx, _MAX_COMPLEXITY),
            intent,
            strategy,
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
            override,
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
            error,
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

    def _text_ids(self) -> tuple[int, int, int, int, int]:
        """The label ids of category, intent, strategy, override, error."""
        ids = self._sink.labels.ids
        qc, ic, st = (
            self._query_category,
            self._intent_category,
            self._strategy,
        )
        ov, err = self._override, self._error
        return (
            _NO_LABEL
            if qc is None
            else (type(qc) is str and ids.get(qc))
            or self._label("category", qc),
            _NO_LABEL
            if ic is None
            else (type(ic) is str and ids.get(ic))
            or self._label("category", ic),
            _NO_LABEL
            if st is None
            else (type(st) is str and ids.get(st))
            or self._label("strategy", st),
            _NO_LABEL
            if ov is None
            else (type(ov) is str and ids.get(ov))
            or self._text("override_reason", ov),
            _NO_LABEL
            if err is None
            else (type(err) is str and ids.get(err))
            or self._text("error", err),
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
            cached = self._sink.labels.lists
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

    def _unwritable(self, exc: Exception) -> bool:
        if self._strict:
            raise InvalidField(
                "record", f"a value raised {type(exc).__name__} when read"
            ) from exc
        self._sink.counters.failed += 1
        return False

    # -- checks: each returns the value to store ---------------------------

    def _bad(self, field: str, reason: str, unknown: Any) -> Any:
        if self._strict:
            raise InvalidField(field, reason)
        self._sink.counters.invalid += 1
        return unknown

    def _screen(self, method: str, unknown: dict[str, Any]) -> bool:
        """Count a late call and unknown names; say whether to check now."""
        if self._ended:
            if self._strict:
                raise InvalidField(method, "called after end(): not recorded")
            self._sink.counters.logged_after_end += 1
            return False
        for name in unknown:
            self._bad(name, "unknown keyword argument", None)
        return self._strict  # default mode checks once, at end

    def _checked_query(self) -> int:
        query = self._query
        if type(query) is not str:
            reason = f"must be a str, not {_short(query)}"
            return int(self._bad("query", reason, 0))
        try:
            data = query.encode()
        except UnicodeEncodeError:
            self._escaped("query")
            data = rec.encode_text(query)
        return (
            (_crc32(data, _QUERY_HASH_SEED) << 32) | _crc32(data)
        ) - _INT64_OFFSET

    def _flag(self, field: str, value: Any) -> int:
        flag = rec.flag_value(value)
        if flag is not None:
            return flag
        reason = f"must be True, False, 0, 1 or None, not {_short(value)}"
        return int(self._bad(field, reason, rec.UNKNOWN_FLAG))

    def _int(self, field: str, value: Any, high: int) -> int:
        count = rec.count_value(value, high)
        if count is not None:
            return count
        reason = f"must be an int in 0..{high}, not {_short(value)}"
        return int(self._bad(field, reason, rec.UNKNOWN_COUNT))

    def _number(self, field: str, value: Any, high: float) -> float:
        number = rec.number_value(value, high)
        if number is not None:
            return number
        bound = "in [0, 1]" if high == 1.0 else "finite and >= 0"
        reason = f"must be a number {bound}, not {_short(value)}"
        return float(self._bad(field, reason, _NAN))

    def _label(self, field: str, value: Any) -> int:
        if value is None:
            return rec.NO_LABEL
        if type(value) is not str:
            reason = f"must be a str, not {_short(value)}"
            return int(self._bad(field, reason, rec.NO_LABEL))
        label = self._sink.labels.ids.get(value)
        if label is not None:
            return label
        if value and (
            len(value) <= _SHORT_NAME_CHARS
            or len(rec.encode_text(value)) <= rec.MAX_NAME_BYTES
        ):
            if not rec.is_encodable(value):
                self._escaped(field)
            return self._sink.labels.intern(value)
        reason = (
            f"must be a non-empty str of at most {rec.MAX_NAME_BYTES} "
            f"UTF-8 bytes, not {_short(value)}"
        )
        return int(self._bad(field, reason, rec.NO_LABEL))

    def _labels(self, field: str, values: Any, limit: int) -> bytes:
        if values is None:
            return _PACKED_PADS[limit]
        key = tuple(values) if type(values) is list else values
        if type(key) is not tuple:
            self._bad(field, f"must be a list of str, not {_short(values)}", 0)
            return _PACKED_PADS[limit]
        lists = self._sink.labels.lists
        try:
            cached = lists.get(key)
        except Exception:  # unhashable or hostile: _label below refuses it
            cached = None
        if cached is not None:
            return cached
        if len(key) > limit:
            reason = f"holds {len(key)} names, at most {limit} allowed"
            self._bad(field, reason, 0)
            return _PACKED_PADS[limit]
        ids = [
            self._label(field, value)
            if value is not None
            else self._bad(field, "holds None, not a name", rec.NO_LABEL)
            for value in key
        ]
        packed = rec.LIST_STRUCTS[limit].pack(*ids, *_PADS[limit][len(ids) :])
        known = self._sink.labels.ids
        if all(type(v) is str and v in known for v in key):
            lists[key] = packed  # every name announced
        return packed

    def _text(self, field: str, value: Any) -> int:
        if value is None:
            return rec.NO_LABEL
        if isinstance(value, BaseException):
            value = self._exception_text(field, value)
        elif type(value) is not str:
            reason = f"must be a str or an exception, not {_short(value)}"
            return int(self._bad(field, reason, rec.NO_LABEL))
        labels = self._sink.labels
        label = labels.ids.get(value)
        if label is None:
            label = labels.texts.get(value)
        if label is not None:
            return label
        if not rec.is_encodable(value):
            self._escaped(field)
        return labels.intern(rec.fit_text(value))

    def _exception_text(self, field: str, error: BaseException) -> str:
        name = type(error).__name__
        try:
            return f"{name}: {error}"
        except Exception:  # a hostile __str__
            self._bad(field, f"str() of the {name} raised", None)
            return f"{name}: <str() raised>"

    def _escaped(self, field: str) -> None:
        if self._strict:
            raise InvalidField(
                field, "holds a lone surrogate: not encodable as UTF-8"
            )
        self._sink.counters.texts_escaped += 1


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 60 else text[:57] + "..."
