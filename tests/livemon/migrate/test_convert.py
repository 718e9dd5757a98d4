"""
The column-at-once conversions agree with the value-by-value ones they
short-cut.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from livemon.migrate.convert import ChunkConverter, _query_hash, _query_hashes
from livemon.migrate.legacy import LAYOUTS
from livemon.record import label_id, list_label_id

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


def _routing_chunk(suggested):
    """A routing chunk of one row per ``suggested`` value, rowids 10..."""
    n = len(suggested)
    rowids = tuple(range(10, 10 + n))
    return rowids, {
        "timestamp": ("2026-10-01 12:00:00",) * n,
        "suggested_agents": tuple(suggested),
        "actual_agents": ('["coder"]',) * n,
    }


class TestChunkConverter:
    def test_a_clean_chunk_keeps_every_row(self):
        """Nothing rejected: every row and rowid kept, no reason given,
        each row's list the ids of its own names."""
        converter = ChunkConverter(LAYOUTS["routing"])
        suggested = ['["coder"]', '["coder", "writer"]', '["coder"]']
        records, seqs, reasons = converter.convert(*_routing_chunk(suggested))
        assert reasons == {}
        assert seqs.tolist() == [10, 11, 12]
        assert records["request_id"].tolist() == [10, 11, 12]
        ids = [list_label_id(r) for r in records["suggested_agents"].tolist()]
        assert ids[0] == ids[2] != ids[1]
        assert records["suggested_agents"][1][:2].tolist() == [
            label_id("coder"),
            label_id("writer"),
        ]

    @given(st.lists(st.sampled_from(["good", "json", "long", "none"])))
    def test_each_rejected_row_has_its_own_reason(self, kinds):
        """Good and bad lists mixed: each bad row rejected with the reason
        for its value, the others kept in order with their rowids."""
        values = {
            "good": '["coder"]',
            "json": "[not json",
            "long": '["a","b","c","d","e","f","g","h","i"]',
            "none": None,
        }
        why = {
            "json": "suggested_agents is not a JSON array",
            "long": "suggested_agents must list at most 8 names",
            "none": "missing suggested_agents",
        }
        converter = ChunkConverter(LAYOUTS["routing"])
        rowids, columns = _routing_chunk([values[k] for k in kinds])
        records, seqs, reasons = converter.convert(rowids, columns)
        assert reasons == {
            i: why[k] for i, k in enumerate(kinds) if k != "good"
        }
        kept = [r for r, k in zip(rowids, kinds, strict=True) if k == "good"]
        assert seqs.tolist() == records["request_id"].tolist() == kept
