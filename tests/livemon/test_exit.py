"""
A coordinator script that follows the README, with or without ``close()``,
with the feedback loop's thread running or not, prints nothing at exit.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = """
from livemon import Coordinator, FeedbackLoop, Monitor, Policy
from livemon.coordinator import Result

monitor = Monitor({ring!r})
with monitor.request("fix my code \\ud800") as ctx:
    ctx.log_intent(category="code", domains=["python"], complexity=3)
    ctx.log_execution(actual_agents=["coder"], execution_time_ms=840.0,
                      success=True, token_count=1200)
feedback = FeedbackLoop(monitor, Policy(interval_s=0.01))
if {thread}:
    feedback.start()
coordinator = Coordinator(monitor, feedback=feedback)
decision = coordinator.route("write a test")
coordinator.complete(decision, Result(agents_used=("coder",), success=True))
assert monitor.counters.recorded == 2, monitor.counters
if {close}:
    feedback.close()
    monitor.close()
"""


@pytest.mark.parametrize("close", [True, False], ids=["close", "no-close"])
@pytest.mark.parametrize("thread", [True, False], ids=["thread", "inline"])
def test_exit_prints_nothing(ring_name, close, thread):
    """Exit status 0, and not a byte on stderr or stdout."""
    script = SCRIPT.format(ring=ring_name, close=close, thread=thread)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
