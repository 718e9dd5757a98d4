"""
Sink and metrics settings a person gets wrong are refused when the
configuration is built (so ``livemon-daemon start`` says why on the
terminal), and a URL the config takes can really be posted to.
"""

from __future__ import annotations

import pytest

from daemon.sinks._otlp_http import Endpoint
from livemon.config import Config
from livemon.exceptions import ConfigError


class TestRefusedAtConfig:
    """Everything the daemon would refuse later, refused by ``Config``."""

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("otlp_endpoint", "http://"),
            ("otlp_endpoint", "http://h:abc"),
            ("otlp_endpoint", "http://u:p@h:4318"),
            ("otlp_endpoint", "http://:p@h:4318"),
            ("otlp_endpoint", "http://[::1:4318"),
            ("alert_webhook_url", "https://h/a#frag"),
            ("metrics_address", "0.0.0.0:9464"),
            ("metrics_address", "abc"),
            ("metrics_address", "127.0.0.1:99999"),
            ("metrics_address", "remote:"),
        ],
    )
    def test_bad_value(self, tmp_path, key, value):
        """A value the sink or the metrics server cannot use is a
        ConfigError naming the key, not a daemon that exits later."""
        with pytest.raises(ConfigError, match=key):
            Config(db=str(tmp_path / "x.db"), **{key: value})

    def test_a_refused_password_is_not_shown(self, tmp_path):
        """An OTLP URL refused for holding a password does not print it."""
        with pytest.raises(ConfigError) as caught:
            Config(
                db=str(tmp_path / "x.db"), otlp_endpoint="http://u:hunter2@h"
            )
        assert "hunter2" not in str(caught.value)

    def test_good_values(self, tmp_path):
        """What the README shows is taken."""
        config = Config(
            db=str(tmp_path / "x.db"),
            otlp_endpoint="http://[::1]:4318/base",
            alert_webhook_url="https://hooks.slack.com/services/T/B/x",
            metrics_address="[::1]:9464",
        )
        assert config.metrics_address == "[::1]:9464"

    @pytest.mark.parametrize(
        "url",
        [
            "clickhouse://u:hunter2@h:9000/no-such-db",
            "clickhouse://u:hunter2@h:99999/db",
            "clickhouse://u:hunter2/x@h:9000/db",  # a '/' not encoded
        ],
    )
    def test_clickhouse_password_not_shown(self, tmp_path, url):
        """A refused ClickHouse URL's message hides its password (it
        reaches terminals and the daemon's log)."""
        with pytest.raises(ConfigError) as caught:
            Config(db=str(tmp_path / "x.db"), clickhouse_url=url)
        assert "hunter2" not in str(caught.value)
        assert "clickhouse://u:***@h:" in str(caught.value)


class TestPostablePath:
    """A path http.client would refuse is percent-encoded once, at parse."""

    @pytest.mark.parametrize(
        ("url", "path"),
        [
            ("http://h:1/my collector", "/my%20collector"),
            ("http://h:1/caf\u00e9", "/caf%C3%A9"),
            ("http://h:1/a%20b?x=1 2", "/a%20b?x=1%202"),
            ("http://h:1/v1/traces?k=a/b", "/v1/traces?k=a/b"),
        ],
    )
    def test_path_encoded(self, url, path):
        """Spaces and non-ASCII are encoded, what is encoded stays."""
        assert Endpoint.parse(url, "otlp_endpoint").path == path


def test_report_url_password_not_shown():
    """``livemon report --clickhouse`` with a bad URL hides its password."""
    from livemon.views.clickhouse import BadClickHouseUrl, parse_url

    with pytest.raises(BadClickHouseUrl) as caught:
        parse_url("clickhouse://u:hunter2@h:9000/no-such-db")
    assert "hunter2" not in str(caught.value)


def test_header_not_latin1_is_permanent_error():
    """A header value http.client cannot encode is a permanent
    DestinationError that says what to do, not an unexpected failure
    logged with a traceback on every retry."""
    from daemon.retry import DestinationError
    from daemon.sinks._otlp_http import post

    endpoint = Endpoint.parse("http://127.0.0.1:9/", "otlp_endpoint")
    with pytest.raises(DestinationError, match="Latin-1") as caught:
        post(
            endpoint,
            b"{}",
            content_type="application/json",
            timeout_s=1.0,
            headers={"Authorization": "Bearer \u20ac"},
        )
    assert caught.value.permanent
