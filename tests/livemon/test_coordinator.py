"""
Coordinator's lifetime: it closes the Monitor it created, never one it was
given.
"""

from __future__ import annotations

from livemon import Coordinator, Monitor
from livemon.coordinator import Result
from tests.livemon.helpers import events_in


class TestLifetime:
    """close() and the context manager."""

    def test_closes_the_monitor_it_created(self, ring_name, monkeypatch):
        """Coordinator() owns its Monitor: close() gives its lanes back."""
        monkeypatch.setenv("LIVEMON_RING", ring_name)
        with Coordinator() as coordinator:
            decision = coordinator.route("fix this python bug")
            assert coordinator.complete(
                decision, Result(agents_used=decision.agents, success=True)
            )
            monitor = coordinator.monitor
        assert not monitor.available
        assert monitor.request("q").end() is False  # closed for good
        assert len(events_in(ring_name)) == 1
        coordinator.close()  # idempotent

    def test_leaves_a_given_monitor_open(self, ring_name):
        """A monitor passed in belongs to the caller."""
        with Monitor(ring_name) as monitor:
            Coordinator(monitor).close()
            assert monitor.available
            assert monitor.request("q").end() is True

    def test_docstring_names_every_argument(self):
        """Args lists each parameter, feedback included."""
        doc = Coordinator.__doc__ or ""
        for name in ("monitor", "classifier", "selector", "feedback"):
            assert f"    {name}:" in doc
