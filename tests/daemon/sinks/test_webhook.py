"""
Tests for daemon/sinks/webhook.py: the three payload shapes, one POST per
alert even across retries, and a real Alertmanager taking the alerts and
telling people (its webhook receiver is a loopback server here).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.request

import pytest

from daemon.forward import DestinationError, Rows
from daemon.sinks.webhook import (
    WebhookDestination,
    alert_id,
    payload,
    pick_format,
)
from tests.daemon.sinks.outbox_rows import alert_row, columns
from tests.daemon.sinks.receivers import Receiver, free_port

HOST = "node-1"


@pytest.fixture
def receiver():
    """A loopback webhook, stopped after the test."""
    server = Receiver(check=json.loads)
    yield server
    server.stop()


def _alerts(*rows) -> Rows:
    return Rows(columns(list(rows)), last_id=rows[-1]["id"])


class TestFormat:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://hooks.slack.com/services/T/B/x", "slack"),
            ("https://chat.example/hooks/abc/slack", "slack"),
            ("http://127.0.0.1:9093/api/v2/alerts", "alertmanager"),
            ("http://127.0.0.1:8000/livemon", "json"),
        ],
    )
    def test_auto_picks_by_url(self, url, expected):
        """``auto`` reads the URL: Slack hosts, Alertmanager's API path."""
        assert pick_format(url, "auto") == expected
        assert pick_format(url, "json") == "json"

    def test_unknown_format_is_refused(self):
        """A misspelt format is refused, naming the valid ones."""
        with pytest.raises(ValueError, match="alertmanager"):
            WebhookDestination("http://h/x", HOST, fmt="teams")

    def test_slack_is_text_only(self):
        """Slack-compatible: one ``text`` with the message and the id."""
        body = json.loads(payload("slack", HOST, "alerts", alert_row(1)))
        assert list(body) == ["text"]
        assert "quality regression" in body["text"]
        assert alert_id(HOST, "alerts", alert_row(1)) in body["text"]

    def test_alert_and_recovery_share_alertmanager_labels(self):
        """A recovery carries its alert's labels (Alertmanager matches on
        them) and ends when it starts; the id is an annotation only."""
        (alert,) = json.loads(
            payload("alertmanager", HOST, "alerts", alert_row(1))
        )
        (ended,) = json.loads(
            payload(
                "alertmanager",
                HOST,
                "alerts",
                alert_row(2, action="quality_recovered"),
            )
        )
        assert alert["labels"] == ended["labels"]
        assert alert["labels"]["alertname"] == "LivemonQualityRegression"
        assert ended["startsAt"] == ended["endsAt"]
        assert alert["endsAt"] > alert["startsAt"]
        assert (
            alert["annotations"]["livemon_id"]
            != (ended["annotations"]["livemon_id"])
        )

    @pytest.mark.parametrize("fmt", ["slack", "alertmanager", "json"])
    def test_a_damaged_row_still_makes_a_payload(self, fmt):
        """Absurd times, NULLs and infinities (a damaged record) give a
        payload, never an exception that would stall the sink for ever."""
        row = alert_row(
            1, timestamp_ns=2**63 - 1, subject=None, message=None,
            old_value=math.inf, statistic=None, samples=None,
        )  # fmt: skip
        json.loads(payload(fmt, HOST, "alerts", row))
        json.loads(
            payload(fmt, HOST, "adjustments", row | {"timestamp_ns": -1})
        )

    def test_json_carries_every_field_and_no_nan(self):
        """livemon's shape holds the whole row; NaN becomes null (JSON
        has no NaN)."""
        row = alert_row(1, statistic=math.nan)
        body = json.loads(payload("json", HOST, "alerts", row))
        assert body["livemon"]["statistic"] is None
        assert body["livemon"]["subject"] == "code"
        assert body["status"] == "firing"
        assert body["alerts"][0]["fingerprint"] == body["livemon"]["id"]


class TestShip:
    def test_each_alert_posted_with_its_stable_id(self, receiver):
        """One POST per row, in order, with ``Idempotency-Key`` = id."""
        hook = WebhookDestination(receiver.url + "/hook", HOST, fmt="json")
        hook.ship("alerts", _alerts(alert_row(1), alert_row(2, subject="ops")))
        hook.ship(
            "adjustments",
            _alerts(alert_row(3, action="agent_confidence", subject="coder")),
        )
        ids = [json.loads(b)["livemon"]["id"] for b in receiver.accepted]
        keys = [h["Idempotency-Key"] for h in receiver.headers]
        assert ids == keys and len(set(ids)) == 3
        assert json.loads(receiver.accepted[2])["livemon"]["kind"] == (
            "adjustments"
        )

    def test_a_retried_batch_skips_what_was_taken(self, receiver):
        """The webhook failing half-way through a batch: the retry posts
        only the rest, so every alert arrives exactly once."""
        receiver.script.extend(
            [(200, {}, b"ok"), (503, {"Retry-After": "1"}, b"")]
        )
        hook = WebhookDestination(receiver.url, HOST, fmt="slack")
        batch = _alerts(*(alert_row(i, subject=f"c{i}") for i in (1, 2, 3)))
        with pytest.raises(DestinationError) as caught:
            hook.ship("alerts", batch)
        assert caught.value.retry_after == 1.0
        hook.ship("alerts", batch)
        texts = [json.loads(b)["text"] for b in receiver.accepted]
        assert len(texts) == len(set(texts)) == 3
        assert receiver.answers == [200, 503, 200, 200]

    def test_refused_payload_is_permanent(self, receiver):
        """Slack's 400/404 (``invalid_payload``, ``no_service``) need a
        person: permanent, with the webhook's words."""
        receiver.script.append((404, {}, b"no_service"))
        hook = WebhookDestination(receiver.url, HOST, fmt="slack")
        with pytest.raises(DestinationError, match="no_service") as caught:
            hook.ship("alerts", _alerts(alert_row(1)))
        assert caught.value.permanent

    def test_the_secret_path_stays_out_of_messages(self, receiver):
        """A Slack webhook's path is its credential: errors (which reach
        the log and the status file) show the host only."""
        receiver.script.append((500, {}, b""))
        hook = WebhookDestination(
            receiver.url + "/services/T0/B0/s3cret", HOST, fmt="slack"
        )
        with pytest.raises(DestinationError) as caught:
            hook.ship("alerts", _alerts(alert_row(1)))
        assert "s3cret" not in str(caught.value)
        assert receiver.url + "/..." in str(caught.value)
        assert receiver.paths == ["/services/T0/B0/s3cret"]


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which(
    "alertmanager"
)


@pytest.fixture
def alertmanager(tmp_path, receiver):
    """A real Alertmanager on loopback whose one receiver is ``receiver``
    (it tells people by webhook), killed after the test."""
    if ALERTMANAGER is None:
        pytest.fail("needs prometheus-alertmanager (.ci/run installs it)")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route: {receiver: people, group_by: [alertname, subject],"
        " group_wait: 0s, group_interval: 1s, repeat_interval: 1h}\n"
        "receivers:\n- name: people\n  webhook_configs:\n"
        f"  - {{url: '{receiver.url}/people', send_resolved: true}}\n"
    )
    process = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url + "/-/ready", process)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "alertmanager exited"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("alertmanager never became ready")


def _active(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as answer:
        return json.load(answer)


def _now_alert(i: int, **change):
    """An alert row stamped now (Alertmanager drops one already ended)."""
    return alert_row(i, timestamp_ns=time.time_ns(), **change)


class TestAlertmanager:
    def test_alerts_reach_people_once_and_recover(
        self, alertmanager, receiver
    ):
        """Posted to a real Alertmanager (format picked by its URL): the
        alert fires once even when re-sent (a replay), people are told
        by webhook, and the recovery resolves it."""
        row = _now_alert(1)
        hook = WebhookDestination(alertmanager + "/api/v2/alerts", HOST)
        assert hook.format == "alertmanager"
        hook.ship("alerts", _alerts(row))
        hook.ship("alerts", _alerts(row))  # shipped again: already taken
        # A restarted daemon re-posts it (crash before the mark moved):
        # Alertmanager folds it into the same alert by its labels.
        WebhookDestination(alertmanager + "/api/v2/alerts", HOST).ship(
            "alerts", _alerts(row)
        )
        (active,) = _active(alertmanager)
        assert active["labels"]["subject"] == "code"
        assert active["annotations"]["livemon_id"] == alert_id(
            HOST, "alerts", row
        )
        receiver.wait_for(lambda: len(receiver.accepted) >= 1)
        told = json.loads(receiver.accepted[0])
        assert told["status"] == "firing"
        assert told["alerts"][0]["labels"]["alertname"] == (
            "LivemonQualityRegression"
        )
        hook.ship("alerts", _alerts(_now_alert(2, action="quality_recovered")))
        receiver.wait_for(
            lambda: any(
                json.loads(b)["status"] == "resolved"
                for b in receiver.accepted
            )
        )
        assert [
            a
            for a in _active(alertmanager)
            if a["status"]["state"] == "active"
        ] == []
        firing = [
            b for b in receiver.accepted if json.loads(b)["status"] == "firing"
        ]
        assert len(firing) == 1

    def test_json_format_has_alertmanagers_webhook_shape(
        self, alertmanager, receiver
    ):
        """livemon's own shape is the message Alertmanager sends its
        webhooks (same keys, plus ``livemon``): tools that take one take
        the other."""
        row = _now_alert(1)
        WebhookDestination(alertmanager + "/api/v2/alerts", HOST).ship(
            "alerts", _alerts(row)
        )
        receiver.wait_for(lambda: len(receiver.accepted) >= 1)
        theirs = json.loads(receiver.accepted[0])
        ours = json.loads(payload("json", HOST, "alerts", row))
        assert set(ours) - {"livemon"} == set(theirs)
        assert set(ours["alerts"][0]) == set(theirs["alerts"][0])
        assert ours["alerts"][0]["labels"] == theirs["alerts"][0]["labels"]
