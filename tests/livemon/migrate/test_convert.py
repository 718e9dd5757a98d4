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
# 16 characters that int(_, 16) may take but that are not 16 hex digits.
near_hex = st.builds(
    lambda digits, odd, at: digits[:at] + odd + digits[at + len(odd) :],
    hex_texts,
    st.sampled_from([" ", "\t", "0x", "_", "+", "-", "\u0661", "g"]),
    st.integers(0, 14),
).filter(lambda text: len(text) == 16)


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

    @given(st.lists(st.one_of(hex_texts, near_hex), min_size=1, max_size=30))
    def test_near_hex_not_taken_as_plain(self, values):
        """Whitespace, a prefix, a sign, an underscore or a non-ASCII
        digit among 16 characters: the same hashes as one by one."""
        assert list(_query_hashes(values)) == [_query_hash(v) for v in values]
