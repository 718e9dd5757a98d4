"""
The alert webhook destination: quality-regression alerts and feedback
adjustments from the outbox, each POSTed as JSON to a person-facing
webhook (Slack-compatible, Alertmanager-compatible or livemon's own shape).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from daemon.forward import DestinationError, Rows
from daemon.outbox import row_dicts
from daemon.sinks._otlp_http import Endpoint, PayloadTooLarge, post
from livemon import __version__
from livemon.config import Config
from livemon.exceptions import ConfigError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "slack", "alertmanager", "json")
"""``alert_webhook_format`` values; ``auto`` picks by URL (``pick_format``)."""
DEFAULT_TIMEOUT_S = 10.0
ALERT_HOLD_S = 24 * 3600.0
"""How long an Alertmanager alert fires without its recovery (``endsAt``)."""
ADJUSTMENT_HOLD_S = 3600.0
"""How long an adjustment shows in Alertmanager as an ``info`` alert."""
_ID_PERSON = b"livemon-alert"


def pick_format(url: str, wanted: str) -> str:
    """The payload shape for ``url``: ``wanted``, or by URL for ``auto``.

    ``auto`` gives ``slack`` for ``hooks.slack.com`` and for paths ending in
    ``/slack`` (Mattermost, Rocket.Chat, Discord's Slack endpoint),
    ``alertmanager`` for paths ending in ``/api/v2/alerts`` (an
    Alertmanager's own API), and ``json`` for anything else.

    Raises:
        ValueError: ``wanted`` is not one of ``FORMATS``.
    """
    if wanted not in FORMATS:
        raise ValueError(
            f"alert_webhook_format {wanted!r} is not one of {FORMATS}"
        )
    if wanted != "auto":
        return wanted
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if parts.hostname == "hooks.slack.com" or path.endswith("/slack"):
        return "slack"
    if path.endswith("/api/v2/alerts"):
        return "alertmanager"
    return "json"


def alert_id(host: str, source: str, row: Mapping[str, Any]) -> str:
    """The stable id of one alert or adjustment (host and ring identity).

    The same row always gets the same id, so a re-sent one can be told
    from a new one by the receiver (``Idempotency-Key``, ``livemon_id``).
    """
    data = f"{host}\0{source}\0{row['epoch']}\0{row['lane']}\0{row['seq']}"
    digest = hashlib.blake2b(data.encode(), digest_size=12, person=_ID_PERSON)
    return "livemon-" + digest.hexdigest()


_MAX_S = 253402300799.0  # 9999-12-31T23:59:59Z, datetime's last second


def _rfc3339(timestamp_ns: int, plus_s: float = 0.0) -> str:
    """UTC RFC 3339 time; a damaged record's time is clamped to what
    ``datetime`` holds, never an error that would stall the sink."""
    seconds = min(max(timestamp_ns / 1e9 + plus_s, 0.0), _MAX_S)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}"
    return "?" if value is None or isinstance(value, float) else str(value)


def _summary(source: str, row: Mapping[str, Any]) -> str:
    message = row.get("message") or row.get("action") or source
    return f"{message} ({row.get('action')} {row.get('subject')})"


def _details(row: Mapping[str, Any]) -> str:
    return (
        f"{row.get('action')} of {row.get('subject')}: "
        f"{_number(row.get('old_value'))} -> "
        f"{_number(row.get('new_value'))}, statistic "
        f"{_number(row.get('statistic'))} against threshold "
        f"{_number(row.get('threshold'))}, {_number(row.get('samples'))} "
        f"samples of {_number(row.get('window_records'))}"
    )


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row as JSON can carry it (NaN and infinities become null)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in row.items()
    }


def _alertmanager(
    host: str, source: str, row: Mapping[str, Any], ident: str
) -> dict[str, Any]:
    """One Alertmanager alert; its labels leave the id out on purpose.

    A recovery must carry the labels of the alert it ends (Alertmanager
    matches by label set), and a re-sent alert then updates itself.
    """
    action = str(row.get("action"))
    start_ns = int(row["timestamp_ns"])
    labels = {"instance": host, "subject": str(row.get("subject"))}
    if source == "alerts":
        labels |= {"alertname": "LivemonQualityRegression"}
        labels |= {"severity": "warning"}
        hold = 0.0 if action == "quality_recovered" else ALERT_HOLD_S
    else:
        labels |= {"alertname": "LivemonAdjustment", "action": action}
        labels |= {"severity": "info"}
        hold = ADJUSTMENT_HOLD_S
    return {
        "labels": labels,
        "annotations": {
            "summary": _summary(source, row),
            "description": _details(row),
            "livemon_id": ident,
        },
        "startsAt": _rfc3339(start_ns),
        "endsAt": _rfc3339(start_ns, hold),
    }


def payload(fmt: str, host: str, source: str, row: Mapping[str, Any]) -> bytes:
    """The JSON body for one alert or adjustment in shape ``fmt``.

    Args:
        fmt: ``slack`` (``{"text": ...}``), ``alertmanager`` (the array an
            Alertmanager's ``/api/v2/alerts`` takes) or ``json`` (the
            message Alertmanager's webhook receivers get, version 4, with
            every field of the row under ``livemon``).
        host: the machine the alert comes from.
        source: ``alerts`` or ``adjustments``.
        row: one outbox row, texts resolved.
    """
    ident = alert_id(host, source, row)
    alert = _alertmanager(host, source, row, ident)
    body: Any
    if fmt == "slack":
        body = {
            "text": f"[livemon {host}] {_summary(source, row)}: "
            f"{_details(row)} (id {ident})"
        }
    elif fmt == "alertmanager":
        body = [alert]
    else:
        resolved = row.get("action") == "quality_recovered"
        alert["status"] = "resolved" if resolved else "firing"
        alert |= {"generatorURL": "", "fingerprint": ident}
        body = {
            "version": "4",
            "receiver": "livemon",
            "status": alert["status"],
            "groupKey": ident,
            "groupLabels": {"alertname": alert["labels"]["alertname"]},
            "commonLabels": alert["labels"],
            "commonAnnotations": alert["annotations"],
            "externalURL": "",
            "alerts": [alert],
            "truncatedAlerts": 0,
            # The row's own ``id`` is its place in this database's outbox.
            "livemon": _clean(row)
            | {"outbox_id": row.get("id"), "id": ident}
            | {"kind": source, "host": host},
        }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def from_config(config: Config, host: str) -> WebhookDestination:
    """The destination ``alert_webhook_url`` asks for.

    Raises:
        ConfigError: a bad URL or format (the message says which).
    """
    try:
        return WebhookDestination(
            config.alert_webhook_url,
            host,
            fmt=config.alert_webhook_format,
            version=__version__,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class WebhookDestination:
    """Ships ``alerts`` and ``adjustments``, one POST per decision, in order.

    Once per alert, not once per coordinator: one feedback loop per host
    decides and records each decision once (``livemon.feedback.leader``).

    Delivery: the forwarding machinery moves this sink's mark only after
    ``ship`` returned, and stores it with the daemon's next commit, so
    every row is posted at least once.  Within one daemon's life a batch
    retried after a failure half-way skips the rows already taken
    (``_taken``).  Only a daemon killed before it stored the mark re-posts,
    once, the rows shipped since, with the same ``livemon_id`` and
    ``Idempotency-Key``: an Alertmanager folds them into the alert they
    repeat (same labels), other receivers can drop them by id.  Strict
    at-most-once would lose the alert of a failed POST; true exactly-once
    needs a receiver that deduplicates, which no sender can provide.

    A row the webhook refuses as too large (413) is counted, logged and
    skipped: the same body would be refused on every retry, and every
    later alert would wait behind it.  Any other refusal (a wrong URL or
    format, credentials) is the configuration's, retried until fixed.

    Attributes:
        posted: rows posted.
        too_large: rows the webhook refused (413), skipped.
    """

    name = "webhook"
    sources: tuple[str, ...] = ("alerts", "adjustments")

    def refused(self) -> dict[str, int]:
        """What status shows of the rows the webhook would not take."""
        return {"alerts_too_large": self.too_large}

    def __init__(
        self,
        url: str,
        host: str,
        *,
        fmt: str = "auto",
        version: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Check the settings; nothing is sent before the first ``ship``.

        Raises:
            ValueError: a bad URL or format, an empty host, timeout <= 0.
        """
        if not host:
            raise ValueError("host is empty: set LIVEMON_HOST")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self.endpoint = Endpoint.parse(
            url, "alert_webhook_url", secret_path=True
        )
        self.format = pick_format(url, fmt)
        self.host = host
        self.timeout_s = timeout_s
        self._agent = f"livemon/{version}" if version else "livemon"
        self._taken: dict[str, set[int]] = {s: set() for s in self.sources}
        self._lock = threading.Lock()
        self.posted = self.too_large = 0

    def ship(self, source: str, rows: Rows) -> None:
        """POST each row not yet taken, in ``id`` order.

        Raises:
            DestinationError: the webhook refused or could not be reached
                (see ``_otlp_http.post``); the rows before it stay taken.
        """
        if source not in self._taken:
            raise DestinationError(
                f"webhook takes {self.sources}, not {source!r}",
                permanent=True,
            )
        ids = rows.columns.get("id") or []
        if ids:  # rows below this batch are behind the mark: forget them
            self._taken[source] = {
                i for i in self._taken[source] if i >= ids[0]
            }
        taken = self._taken[source]
        for row in row_dicts(rows.columns):
            if row["id"] in taken:
                continue
            self._post(source, row)
            taken.add(row["id"])

    def _post(self, source: str, row: Mapping[str, Any]) -> None:
        body = payload(self.format, self.host, source, row)
        try:
            post(
                self.endpoint,
                body,
                content_type="application/json",
                timeout_s=self.timeout_s,
                headers={
                    "Idempotency-Key": alert_id(self.host, source, row),
                    "User-Agent": self._agent,
                },
            )
        except PayloadTooLarge as exc:
            with self._lock:
                self.too_large += 1
            logger.warning(
                "%s; this %s row (outbox id %s) is skipped (counted in "
                "alerts_too_large): raise the webhook's body limit",
                exc,
                source,
                row.get("id"),
            )
            return
        with self._lock:
            self.posted += 1

    def close(self) -> None:
        """Nothing to release: each POST has its own connection."""
