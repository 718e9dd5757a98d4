"""
The feedback loop: pure statistics over the ring's recent window
(``stats``), pure rules that turn them into actions (``rules``), and the
thread that applies them and records each action (``loop``).
"""

from __future__ import annotations

from livemon.feedback.loop import FeedbackLoop
from livemon.feedback.rules import Action, FeedbackState, Policy, decide
from livemon.feedback.stats import WindowStats, feedback_stats

__all__ = [
    "Action",
    "FeedbackLoop",
    "FeedbackState",
    "Policy",
    "WindowStats",
    "decide",
    "feedback_stats",
]
