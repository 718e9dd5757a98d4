"""
The column-at-once conversions agree with the value-by-value ones they
short-cut.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from livemon.migrate.convert import _query_hash, _query_hashes

hex_texts = st.integers(0, 2**64 - 1).map("{:016x}".format)
any_texts = st.one_of(hex_texts, st.text(max_size=20), st.none())


class TestQueryHashes:
    @given(st.lists(hex_texts, max_size=30))
    def test_plain_hex_parsed_at_once(self, values):
        """A chunk of 64-bit hex gets the same hashes as one by one."""
        assert list(_query_hashes(values)) == [_query_hash(v) for v in values]

    @given(st.lists(any_texts, max_size=30))
    def test_anything_else_one_by_one(self, values):
        """Texts that are not hex, too long or missing: the same hashes
        as one by one (the chunk falls back whole)."""
        assert list(_query_hashes(values)) == [_query_hash(v) for v in values]
