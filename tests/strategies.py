"""
Reusable Hypothesis strategies: the values a coordinator may hand to
livemon, valid or not (numpy scalars, NaN/inf, huge ints, lone surrogates,
objects whose own methods raise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st


class Hostile:
    """An object whose every conversion raises: str, repr, hash, numbers."""

    def _fail(self, *args: object) -> Any:
        raise RuntimeError("hostile object")

    __str__ = __repr__ = __hash__ = __float__ = __int__ = __index__ = _fail
    __bool__ = __len__ = __iter__ = _fail

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("hostile object")


class UnprintableError(Exception):
    """An exception whose ``str()`` and ``repr()`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("cannot print me")

    __repr__ = __str__


#: Lone surrogates, as ``json.loads`` returns for escaped model output.
surrogates = st.characters(categories=["Cs"])

#: Text of any kind: plain, non-ASCII, empty, with lone surrogates, long.
texts = st.one_of(
    st.text(max_size=20),
    st.text(st.one_of(st.characters(), surrogates), min_size=1, max_size=8),
    st.just("x" * 300),
    st.just("é" * 100),
)

#: What may arrive where something is expected but it is not that thing.
junk = st.one_of(
    st.none(),
    st.builds(Hostile),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.just(object()),
)

#: Floats and integers of every size, plain and as numpy scalars.
numbers = st.one_of(
    st.floats(),
    st.floats(0, 1),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
    st.floats(0, 1, width=32).map(np.float32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(0, 2**16).map(np.int32),
    st.booleans().map(np.bool_),
)

#: Values for a tri-state flag, good and bad.
flags = st.one_of(
    st.none(),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.sampled_from([0, 1, 2, -1]),
    st.integers(0, 1).map(np.int64),
    st.floats(0, 1),
    texts,
    junk,
)

#: A name (category, strategy, agent): mostly valid, sometimes not.
names = st.one_of(st.sampled_from(["code", "coder", "parallel"]), texts, junk)

#: A list of names, or something that is not one.
name_lists = st.one_of(
    st.none(),
    st.lists(names, max_size=10),
    st.lists(names, max_size=3).map(tuple),
    st.sampled_from([["coder"], ["coder", "reviewer"]]),
    texts,
    junk,
)

#: An error: text, an exception (printable or not), or junk.
errors = st.one_of(
    texts,
    texts.map(ValueError),
    st.builds(UnprintableError),
    junk,
)

#: Any value at all for any argument.
anything = st.one_of(numbers, flags, names, name_lists, errors)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy``, or any other value (a wrong type), or None."""
    return st.one_of(strategy, st.none(), anything)
