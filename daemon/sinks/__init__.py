"""
The destinations the daemon forwards the outbox to, built from the
configuration: ClickHouse (events, agent runs), OTLP, alert webhooks.
"""

from __future__ import annotations

from daemon.forward import Destination
from daemon.sinks import otlp, webhook
from daemon.sinks.clickhouse import ClickHouseDestination
from livemon.config import Config

__all__ = ["ClickHouseDestination", "configured"]


def configured(config: Config, host: str) -> list[Destination]:
    """The destinations ``config`` asks for, none of them connected yet.

    Args:
        host: this machine's name in the destinations (``config.host``).

    Raises:
        ValueError: a destination's URL cannot be used (config checks
            them first, so this means a caller skipped it).
    """
    destinations: list[Destination] = []
    if config.clickhouse_url:
        destinations.append(
            ClickHouseDestination(
                config.clickhouse_url,
                host,
                batch_bytes=config.clickhouse_batch_bytes,
            )
        )
    if config.otlp_endpoint:
        destinations.append(otlp.from_config(config, host))
    if config.alert_webhook_url:
        destinations.append(webhook.from_config(config, host))
    return destinations
