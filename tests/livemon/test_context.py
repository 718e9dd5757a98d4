"""
RequestContext with hostile input: lone surrogates, numpy scalars, objects
whose methods raise, late calls.  Default mode never raises and counts;
strict mode raises only livemon's typed errors; the caller's exception
always propagates unchanged.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livemon import InvalidField, LivemonError, Monitor
from livemon import record as rec
from tests import strategies as sts
from tests.livemon.helpers import events_in, labels_in

SURROGATE = "\ud800"


# -- what the record should hold: the documented rules, spelled out -----


def _is_bool(value):
    return isinstance(value, bool | np.bool_)


def want_number(value, high):
    """The stored float for ``value``, NaN when it is refused."""
    if isinstance(value, numbers.Real) and not _is_bool(value):
        number = float(value)
        if 0 <= number <= high and number != math.inf:
            return number
    return math.nan


def want_count(value, high):
    """The stored count for ``value``, -1 when refused."""
    integral = isinstance(value, numbers.Integral) and not _is_bool(value)
    if integral and 0 <= int(value) <= high:
        return int(value)
    return rec.UNKNOWN_COUNT


def want_flag(value):
    """The stored flag for ``value``, -1 when unknown or refused."""
    if _is_bool(value):
        return int(bool(value))
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return int(value)
    return rec.UNKNOWN_FLAG


def want_name(value):
    """The label id of a name, 0 when refused."""
    name = type(value) is str and value
    if name and len(rec.encode_text(value)) <= rec.MAX_NAME_BYTES:
        return rec.label_id(value)
    return rec.NO_LABEL


def want_names(values, limit):
    """The padded ids of a list of names (all zero when refused)."""
    if type(values) not in (list, tuple) or len(values) > limit:
        return [0] * limit
    ids = [want_name(v) for v in values]
    return ids + [0] * (limit - len(ids))


def want_text(value):
    """The label id of an error or override reason, 0 when refused."""
    if isinstance(value, BaseException):
        try:
            value = f"{type(value).__name__}: {value}"
        except Exception:
            value = f"{type(value).__name__}: <str() raised>"
    if type(value) is not str:
        return rec.NO_LABEL
    return rec.label_id(rec.fit_text(value))


def same(stored, wanted):
    """Equal, with NaN equal to NaN."""
    if isinstance(wanted, float) and math.isnan(wanted):
        return math.isnan(stored)
    return stored == wanted


# -- the fuzz ----------------------------------------------------------

CALLS = st.fixed_dictionaries(
    {
        "query": sts.maybe(sts.texts),
        "category": sts.maybe(sts.names),
        "intent": st.fixed_dictionaries(
            {
                "category": sts.names,
                "domains": sts.name_lists,
                "complexity": sts.maybe(sts.numbers),
            }
        ),
        "routing": st.fixed_dictionaries(
            {
                "suggested_agents": sts.name_lists,
                "strategy": sts.names,
                "confidence": sts.maybe(sts.numbers),
            }
        ),
        "execution": st.fixed_dictionaries(
            {
                "actual_agents": sts.name_lists,
                "execution_time_ms": sts.maybe(sts.numbers),
                "success": sts.flags,
                "error": sts.maybe(sts.errors),
                "token_count": sts.maybe(sts.numbers),
                "context_size_kb": sts.maybe(sts.numbers),
            }
        ),
        "quality": st.fixed_dictionaries(
            {
                "score": sts.maybe(sts.numbers),
                "task_completed": sts.flags,
                "code_valid": sts.flags,
                "tests_passed": sts.flags,
            }
        ),
        "acceptance": st.fixed_dictionaries(
            {"accepted": sts.flags, "override_reason": sts.maybe(sts.texts)}
        ),
        "end_error": sts.maybe(sts.errors),
    }
)


def expected_fields(call):
    """Each column of the record and the value it must hold."""
    ex, q = call["execution"], call["quality"]
    error = call["end_error"] if call["end_error"] is not None else ex["error"]
    success = ex["success"]
    if call["end_error"] is not None and success is None:
        success = False
    return {
        "query_category": want_name(call["category"]),
        "intent_category": want_name(call["intent"]["category"]),
        "query_complexity": want_count(call["intent"]["complexity"], 32767),
        "routing_strategy": want_name(call["routing"]["strategy"]),
        "confidence": want_number(call["routing"]["confidence"], 1.0),
        "execution_time_ms": want_number(ex["execution_time_ms"], math.inf),
        "success": want_flag(success),
        "error": want_text(error),
        "token_count": want_count(ex["token_count"], 2**62),
        "context_size_kb": want_number(ex["context_size_kb"], math.inf),
        "quality_score": want_number(q["score"], 1.0),
        "task_completed": want_flag(q["task_completed"]),
        "code_valid": want_flag(q["code_valid"]),
        "tests_passed": want_flag(q["tests_passed"]),
        "accepted": want_flag(call["acceptance"]["accepted"]),
        "override_reason": want_text(call["acceptance"]["override_reason"]),
        "intent_domains": want_names(call["intent"]["domains"], 8),
        "suggested_agents": want_names(call["routing"]["suggested_agents"], 8),
        "actual_agents": want_names(call["execution"]["actual_agents"], 8),
    }


def run_request(monitor, call):
    """Make every log_* call of ``call`` and end the request."""
    ctx = monitor.request(call["query"], category=call["category"])
    ctx.log_intent(**call["intent"])
    ctx.log_routing(**call["routing"])
    ctx.log_execution(**call["execution"])
    ctx.log_quality(**call["quality"])
    ctx.log_acceptance(**call["acceptance"])
    return ctx.end(call["end_error"])


class TestFuzz:
    """Every argument of every log_* call and of end(), at random."""

    @settings(
        max_examples=150,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(call=CALLS)
    def test_default_mode_never_raises_and_stores_value_or_unknown(
        self, monitor, ring_name, call
    ):
        """Each column holds the value given, or the documented unknown."""
        assert run_request(monitor, call) is True
        event = events_in(ring_name)[-1]
        for column, wanted in expected_fields(call).items():
            stored = event[column]
            if isinstance(wanted, list):
                assert stored.tolist() == wanted, column
            else:
                assert same(stored.item(), wanted), column
        labels_in(ring_name)  # every stored label text is valid UTF-8

    @settings(
        max_examples=100,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(call=CALLS)
    def test_strict_mode_raises_only_typed_errors(self, strict, call):
        """Whatever the values, strict mode raises a LivemonError or none."""
        with contextlib.suppress(LivemonError):
            run_request(strict, call)


class TestSurrogatesAndHostileObjects:
    """Text UTF-8 cannot encode, and objects whose methods raise."""

    @pytest.mark.parametrize(
        "where",
        ["query", "category", "agents", "error", "override", "end_error"],
    )
    def test_lone_surrogate_is_stored_escaped_and_counted(
        self, monitor, ring_name, where
    ):
        """No UnicodeEncodeError: the escaped text is stored and counted."""
        text = f"bad {SURROGATE} text"
        query = text if where == "query" else "q"
        category = text if where == "category" else None
        ctx = monitor.request(query, category=category)
        if where == "agents":
            ctx.log_routing(suggested_agents=["coder", text])
        if where == "error":
            ctx.log_execution(error=text)
        if where == "override":
            ctx.log_acceptance(override_reason=text)
        assert ctx.end(text if where == "end_error" else None) is True
        (event,) = events_in(ring_name)
        assert monitor.counters.texts_escaped == 1
        assert monitor.counters.invalid == 0
        labels = labels_in(ring_name)
        escaped = "bad \\ud800 text"
        column = {
            "category": "query_category",
            "error": "error",
            "end_error": "error",
            "override": "override_reason",
        }.get(where)
        if column is not None:
            assert labels[event[column]] == escaped
        if where == "agents":
            assert labels[event["suggested_agents"][1]] == escaped
        if where == "query":
            assert event["query_hash"] != 0

    def test_label_ids_of_surrogate_text_are_stable(self, monitor):
        """The same text gets the same id, counted once while cached."""
        first = monitor.intern(SURROGATE)
        assert first == monitor.intern(SURROGATE) == rec.label_id(SURROGATE)

    def test_surrogate_in_strict_mode_is_invalid_field(self, strict):
        """Strict mode names the field holding the lone surrogate."""
        with pytest.raises(InvalidField) as info:
            strict.request("q").log_acceptance(override_reason=SURROGATE)
        assert info.value.field == "override_reason"
        with pytest.raises(InvalidField) as info:
            strict.request(SURROGATE)
        assert info.value.field == "query"

    def test_callers_exception_propagates_unchanged(self, monitor, ring_name):
        """An exception with a surrogate in its text is still the caller's."""
        error = ValueError(f"model said {SURROGATE}")
        with pytest.raises(ValueError) as info, monitor.request("q"):
            raise error
        assert info.value is error
        (event,) = events_in(ring_name)
        assert labels_in(ring_name)[event["error"]] == (
            "ValueError: model said \\ud800"
        )

    @pytest.mark.parametrize("mode", ["default", "strict"])
    def test_unprintable_exception_propagates_unchanged(self, ring_name, mode):
        """Its str() raises; ours never replaces it, in either mode."""
        error = sts.UnprintableError()
        with Monitor(ring_name, strict=mode == "strict") as mon:
            with (
                pytest.raises(sts.UnprintableError) as info,
                mon.request("q"),
            ):
                raise error
            assert info.value is error
            (event,) = events_in(ring_name)
            assert labels_in(ring_name)[event["error"]] == (
                "UnprintableError: <str() raised>"
            )

    def test_hostile_values_are_refused_and_counted(self, monitor, ring_name):
        """An object whose hash, str and numbers raise, in every field."""
        bad = sts.Hostile()
        ctx = monitor.request("q", category=bad)
        ctx.log_intent(category=bad, domains=[bad], complexity=bad)
        ctx.log_routing(suggested_agents=bad, strategy=bad, confidence=bad)
        ctx.log_execution(actual_agents=[bad, "coder"], error=bad, success=bad)
        ctx.log_quality(score=bad, tests_passed=bad)
        ctx.log_acceptance(accepted=bad, override_reason=bad)
        assert ctx.end() is True
        (event,) = events_in(ring_name)
        assert monitor.counters.invalid >= 12
        assert event["intent_category"] == event["error"] == 0
        assert math.isnan(event["confidence"])
        assert event["actual_agents"][1] == rec.label_id("coder")

    def test_hostile_value_in_strict_mode_is_invalid_field(self, strict):
        """Strict mode: InvalidField naming the field, nothing else."""
        with pytest.raises(InvalidField) as info:
            strict.request("q").log_routing(confidence=sts.Hostile())
        assert info.value.field == "confidence"


class TestNumbers:
    """numpy scalars and plain ints are numbers; bools, NaN, inf are not."""

    def test_numpy_scalars_and_ints_are_stored(self, monitor, ring_name):
        """np.float64/32 numbers, np.int64 counts, np.bool_ and 0/1 flags."""
        with monitor.request("q") as ctx:
            ctx.log_intent(complexity=np.int16(3))
            ctx.log_routing(confidence=np.float32(0.5))
            ctx.log_execution(
                execution_time_ms=np.float64(12.5),
                token_count=np.int64(99),
                context_size_kb=3,
                success=np.bool_(True),
            )
            ctx.log_quality(score=1, task_completed=1, code_valid=0)
            ctx.log_acceptance(accepted=np.bool_(False))
        (event,) = events_in(ring_name)
        assert monitor.counters.invalid == 0
        assert (event["query_complexity"], event["token_count"]) == (3, 99)
        assert event["confidence"] == 0.5
        assert event["execution_time_ms"] == 12.5
        assert (event["context_size_kb"], event["quality_score"]) == (3, 1)
        assert event["success"] == event["task_completed"] == 1
        assert event["code_valid"] == event["accepted"] == 0

    @pytest.mark.parametrize(
        ("kwargs", "column"),
        [
            ({"score": True}, "quality_score"),
            ({"score": np.bool_(True)}, "quality_score"),
            ({"score": np.float64("nan")}, "quality_score"),
            ({"score": np.float32("inf")}, "quality_score"),
            ({"score": 2**80}, "quality_score"),
            ({"tests_passed": 2}, "tests_passed"),
            ({"tests_passed": 1.0}, "tests_passed"),
        ],
    )
    def test_refused_values_are_unknown_and_counted(
        self, monitor, ring_name, kwargs, column
    ):
        """Bools as numbers, NaN, inf, out of range: unknown, counted."""
        with monitor.request("q") as ctx:
            ctx.log_quality(**kwargs)
        (event,) = events_in(ring_name)
        assert monitor.counters.invalid == 1
        value = event[column].item()
        assert math.isnan(value) if isinstance(value, float) else value == -1

    def test_huge_token_count_is_refused(self, monitor, ring_name):
        """Counts above 2**62 (and numpy overflowing ones) are unknown."""
        with monitor.request("q") as ctx:
            ctx.log_execution(token_count=2**62 + 1)
        assert events_in(ring_name)[0]["token_count"] == -1
        assert monitor.counters.invalid == 1


class TestUncountedDrops:
    """Nothing is dropped without a count."""

    def test_log_after_end_is_counted(self, monitor, ring_name):
        """A late log_* call changes nothing and is counted."""
        ctx = monitor.request("q")
        ctx.end()
        ctx.log_quality(score=0.5)
        ctx.log_routing(confidence=0.5, bogus=1)
        assert monitor.counters.logged_after_end == 2
        assert monitor.counters.invalid == 0
        assert math.isnan(events_in(ring_name)[0]["quality_score"])

    def test_log_after_end_in_strict_mode_raises(self, strict):
        """Strict mode names the late method."""
        ctx = strict.request("q")
        ctx.end()
        with pytest.raises(InvalidField) as info:
            ctx.log_quality(score=0.5)
        assert info.value.field == "log_quality"

    def test_none_in_a_list_is_counted(self, monitor, ring_name):
        """domains=["a", None] keeps "a", counts the None."""
        with monitor.request("q") as ctx:
            ctx.log_intent(domains=["a", None])
        (event,) = events_in(ring_name)
        assert event["intent_domains"][:2].tolist() == [rec.label_id("a"), 0]
        assert monitor.counters.invalid == 1

    def test_unknown_keyword_is_counted_once(self, monitor):
        """Default mode counts a misspelt keyword once, not twice."""
        with monitor.request("q") as ctx:
            ctx.log_acceptance(acepted=True, override_reason=7)
        assert monitor.counters.invalid == 2  # acepted, then the reason


class TestStrictExit:
    """In strict mode too, the caller's exception is never replaced."""

    def test_invalid_value_with_an_exception_in_the_block(self, ring_name):
        """The record is checked leniently and written; KeyError wins."""
        with Monitor(ring_name, strict=True) as mon:
            error = KeyError("agent")
            with pytest.raises(KeyError) as info, mon.request("q") as ctx:
                ctx._score = "bad"  # as if logged before strictness applied
                raise error
            assert info.value is error
            assert mon.counters.invalid == 1
            assert mon.counters.recorded == 1
