"""
End to end: the real feedback loop finds a quality regression, a real
daemon stores it and posts it, with the adjustments, to a loopback webhook.
"""

from __future__ import annotations

import collections
import json

import numpy as np

from livemon import Monitor
from tests.daemon.sinks.receivers import Receiver, sink_figures

HOST = "e2e-host"


class TestAlerts:
    def test_the_feedback_loops_alerts_reach_the_webhook_once(
        self, start_daemon, daemon_env
    ):
        """A quality regression found by the real feedback loop (two
        coordinators' loops: one leads and records, the other only reads)
        is stored once and posted to the webhook (after a 503) once, each
        post with its own stable id, adjustments too."""
        from livemon.feedback import FeedbackLoop
        from tests.livemon.feedback.test_loop import requests

        receiver = Receiver(check=json.loads)
        try:
            receiver.script.append((503, {"Retry-After": "1"}, b""))
            env = daemon_env | {
                "LIVEMON_ALERT_WEBHOOK_URL": receiver.url + "/hook",
                "LIVEMON_ALERT_WEBHOOK_FORMAT": "json",
                "LIVEMON_HOST": HOST,
            }
            daemon = start_daemon(env)
            with Monitor(env["LIVEMON_RING"]) as monitor:
                agent = monitor.intern("flaky_agent")
                writer = monitor._rings[0].writer()
                records = requests(120, success=0.4, quality=0.6, agent=agent)
                records["intent_category"] = monitor.intern("code")
                before = requests(400, quality=0.95, agent=agent)
                before["intent_category"] = monitor.intern("code")
                before["timestamp_ns"] -= 1000
                writer.put_many(np.concatenate([before, records]))
                # Two coordinators' loops: the first leads, the other reads.
                loops = [FeedbackLoop(monitor), FeedbackLoop(monitor)]
                actions = loops[0].update()
                assert actions and loops[1].update() == []
                writer.close()
                for loop in loops:
                    loop.close()
            stored = "SELECT (SELECT count(*) FROM alerts)"
            stored += " + (SELECT count(*) FROM adjustments)"
            daemon.wait_until(lambda: daemon.count(stored) == len(actions))
            receiver.wait_for(lambda: len(receiver.accepted) == len(actions))
            daemon.wait_until(
                lambda: sink_figures(daemon, "webhook").get("lag_rows") == 0
            )
            assert daemon.stop() == 0
        finally:
            receiver.stop()
        bodies = [json.loads(b) for b in receiver.accepted]
        ids = [b["livemon"]["id"] for b in bodies]
        assert len(set(ids)) == len(ids) == len(actions)
        assert receiver.answers[0] == 503
        kinds = collections.Counter(b["livemon"]["kind"] for b in bodies)
        assert kinds["alerts"] >= 1 and kinds["adjustments"] >= 1
        (alert,) = [b for b in bodies if b["livemon"]["kind"] == "alerts"]
        assert alert["status"] == "firing"
        assert alert["commonLabels"]["subject"] == "code"
        assert "quality regression" in alert["commonAnnotations"]["summary"]
