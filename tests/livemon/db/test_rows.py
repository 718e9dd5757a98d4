"""
Records to rows: feedback actions of any code become rows, so one record
from a newer coordinator or a damaged one never stops the drain.
"""

from __future__ import annotations

import numpy as np

from livemon.db.rows import feedback_rows
from livemon.record import FEEDBACK_DTYPE, FeedbackAction
from ringbuf import Batch


def actions(*codes: int) -> Batch:
    """A feedback batch with one record per action code."""
    records = np.zeros(len(codes), FEEDBACK_DTYPE)
    records["action"] = codes
    return Batch(2, 10, records)


class TestFeedbackRows:
    def test_known_codes_go_to_their_table(self):
        """Alerts to ``alerts``, adjustments to ``adjustments``, by name."""
        alert = int(FeedbackAction.QUALITY_ALERT)
        cap = int(FeedbackAction.PARALLEL_CAP)
        tables = dict(feedback_rows(7, actions(alert, cap)))
        assert [r[5] for r in tables["alerts"]] == ["quality_alert"]
        assert [r[5] for r in tables["adjustments"]] == ["parallel_cap"]
        assert [r[:3] for r in tables["adjustments"]] == [(7, 2, 11)]

    def test_unknown_code_is_stored_by_number(self):
        """A code this release does not know is an ``action_<code>``
        adjustment, with its identity; the others are unaffected."""
        known = int(FeedbackAction.AGENT_CONFIDENCE)
        tables = dict(feedback_rows(7, actions(200, known)))
        names = [(r[2], r[5]) for r in tables["adjustments"]]
        assert names == [(10, "action_200"), (11, "agent_confidence")]
