"""
The slow path of ``RequestContext``: every field's full check, taken only
when the inline common case does not hold. Each checker returns the value
to store, counting (or, in strict mode, raising ``InvalidField``) what it
refuses.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import Any

from livemon import record as rec
from livemon.exceptions import InvalidField, LivemonError
from livemon.sink import Sink

QUERY_HASH_SEED = 0x9E3779B9  # the second CRC's seed: 2**32 / phi
INT64_OFFSET = 1 << 63  # maps an unsigned 64-bit hash to a signed one
_NAN = float("nan")
PADS = {n: (rec.NO_LABEL,) * n for n in (rec.MAX_AGENTS, rec.MAX_DOMAINS)}
PACKED_PADS = {n: rec.LIST_STRUCTS[n].pack(*PADS[n]) for n in PADS}
# A name this short cannot exceed the byte limit, whatever its characters.
_SHORT_NAME_CHARS = rec.MAX_NAME_BYTES // rec.MAX_BYTES_PER_CHAR
_crc32 = zlib.crc32
MAX_CACHED_LISTS = 10_000
"""Lists of names whose packed ids are kept at most; beyond, all are
forgotten (and packed anew when seen again).  Orders and subsets of a
few known names are endless, and adding to the cache took no new text."""


def hash_bytes(data: bytes) -> int:
    """The signed 64-bit hash of ``data``: two CRC-32s, different seeds."""
    return ((_crc32(data, QUERY_HASH_SEED) << 32) | _crc32(data)) - (
        INT64_OFFSET
    )


@contextlib.contextmanager
def read_strictly(method: str) -> Iterator[None]:
    """Strict mode's checks at a ``log_*`` call: a value whose own code
    raises (say a ``__class__`` or ``__float__``) is an ``InvalidField``
    naming the call, as it is at ``end()``, not that value's exception."""
    try:
        yield
    except LivemonError:
        raise
    except Exception as exc:
        reason = f"a value raised {type(exc).__name__} when read"
        raise InvalidField(method, reason) from exc


class FieldChecks:
    """The checkers, mixed into ``RequestContext`` (no call on the way).

    They read the context's sink, strictness and whether it ended.
    """

    _sink: Sink
    _strict: bool
    _ended: bool
    _query: Any

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
        query = _exact_str(self._query)
        if query is None:
            reason = f"must be a str, not {_short(self._query)}"
            return int(self._bad("query", reason, 0))
        try:
            data = query.encode()
        except UnicodeEncodeError:
            self._escaped("query")
            data = rec.encode_text(query)
        return hash_bytes(data)

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
        text = _exact_str(value)
        if text is None:
            reason = f"must be a str, not {_short(value)}"
            return int(self._bad(field, reason, rec.NO_LABEL))
        value = text
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
            return PACKED_PADS[limit]
        key = tuple(values) if type(values) is list else values
        if type(key) is not tuple:
            self._bad(field, f"must be a list of str, not {_short(values)}", 0)
            return PACKED_PADS[limit]
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
            return PACKED_PADS[limit]
        ids = [
            self._label(field, value)
            if value is not None
            else self._bad(field, "holds None, not a name", rec.NO_LABEL)
            for value in key
        ]
        packed = rec.LIST_STRUCTS[limit].pack(*ids, *PADS[limit][len(ids) :])
        known = self._sink.labels.ids
        if all(type(v) is str and v in known for v in key):
            if len(lists) >= MAX_CACHED_LISTS:  # known names, endless orders
                lists.clear()
            lists[key] = packed  # every name announced
        return packed

    def _text(self, field: str, value: Any) -> int:
        if value is None:
            return rec.NO_LABEL
        if isinstance(value, BaseException):
            value = self._exception_text(field, value)
        elif type(value) is not str:
            text = _exact_str(value)
            if text is None:
                reason = f"must be a str or an exception, not {_short(value)}"
                return int(self._bad(field, reason, rec.NO_LABEL))
            value = text
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


def _exact_str(value: object) -> str | None:
    """``value`` as a plain str, None if it is none: a subclass (say a
    ``StrEnum`` member) by its value, none of its own methods called."""
    if issubclass(type(value), str):
        return str.__str__(value)
    return None


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 60 else text[:57] + "..."
