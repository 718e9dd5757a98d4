"""
The feedback loop: per-agent change detection (``detect``) and running
figures from agent runs and requests (``tracker``, fed by ``follow``),
pure rules that turn them into actions (``rules``, tuned by a ``Policy``
that ``policy_checks`` validates; window statistics in ``stats``),
computed once per host by a leader (``leader``) that publishes the
decisions in shared memory (``decisions``) and records each action for
the daemon (``journal``), and the loop every coordinator runs (``loop``).
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
