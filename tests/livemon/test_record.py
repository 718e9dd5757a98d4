"""
The record layout: the hot path's struct packing agrees with RECORD_DTYPE.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemon import record as rec


class TestLayout:
    def test_struct_packing_matches_the_numpy_dtype(self):
        """Bytes packed by the hot path read back field by field in numpy."""
        scalars = [
            1,
            2,
            3,
            0,
            -4,
            5,
            6,
            7,
            8,
            0.5,
            1,
            9,
            12.5,
            0,
            10,
            0.75,
            1,
            0,
            -1,
            123,
            4.5,
            999,
        ]
        lists = [list(range(1, 9)), list(range(11, 19)), list(range(21, 29))]
        packed = rec.SCALARS_STRUCT.pack(*scalars) + b"".join(
            rec.LIST_STRUCTS[8].pack(*ids) for ids in lists
        )
        record = np.frombuffer(packed, rec.RECORD_DTYPE)[0]
        names = [n for n in rec.RECORD_DTYPE.names if record[n].ndim == 0]
        assert [record[n].item() for n in names] == scalars
        assert record["intent_domains"].tolist() == lists[0]
        assert record["suggested_agents"].tolist() == lists[1]
        assert record["actual_agents"].tolist() == lists[2]


class TestLabels:
    @given(st.text())
    def test_label_id_is_stable_and_never_zero(self, text):
        """Zero means "no label", so no text may hash to it."""
        assert rec.label_id(text) == rec.label_id(text) != rec.NO_LABEL

    @given(st.text(min_size=0, max_size=3000))
    def test_fit_text_keeps_what_fits_and_marks_what_does_not(self, text):
        """Long text is cut visibly, never silently, within the limit."""
        fitted = rec.fit_text(text, 1024)
        assert len(fitted.encode()) <= 1024
        if len(text.encode()) <= 1024:
            assert fitted == text
        else:
            prefix = fitted.split("...[truncated")[0]
            assert "truncated" in fitted
            assert text.startswith(prefix)

    def test_label_record_round_trip(self):
        """A label record carries its id, length and exact UTF-8 text."""
        text = "agent ünïcode ✓"
        record = np.frombuffer(rec.label_record(text), rec.LABEL_DTYPE)[0]
        assert record["label_id"] == rec.label_id(text)
        raw = record["text"][: record["length"]].tobytes()
        assert raw.decode() == text


class TestText:
    """Text UTF-8 cannot encode has one stable, valid stored form."""

    @given(st.text(st.characters(categories=["Cs", "Ll"]), max_size=20))
    def test_surrogates_are_stored_as_escapes(self, text):
        """Valid UTF-8 in the record; the same id every time."""
        record = np.frombuffer(rec.label_record(text), rec.LABEL_DTYPE)[0]
        raw = record["text"][: record["length"]].tobytes()
        assert raw.decode() == text.encode(errors="backslashreplace").decode()
        assert record["label_id"] == rec.label_id(text)

    @given(st.text(st.characters(categories=["Cs", "Lo"]), max_size=900))
    def test_fit_text_counts_escaped_bytes(self, text):
        """The limit holds for the escaped form too."""
        assert len(rec.encode_text(rec.fit_text(text, 1024))) <= 1024

    def test_is_encodable(self):
        """Only lone surrogates make a str unencodable."""
        assert rec.is_encodable("ünïcode ✓")
        assert not rec.is_encodable("a\ud800b")


class TestLayoutCheck:
    """The layout invariants hold under python -O too."""

    def test_a_broken_layout_raises(self, monkeypatch):
        """Not an assert: an explicit error names the invariant."""
        monkeypatch.setattr(rec, "LIST_FIELDS", {"other": 8})
        with pytest.raises(ImportError, match="LIST_FIELDS"):
            rec._check_layout()
