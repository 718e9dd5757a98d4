"""
Live, near-zero-overhead monitoring for a multi-agent coordinator.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from livemon.config import Config, load_config
from livemon.context import RequestContext
from livemon.coordinator import Coordinator
from livemon.exceptions import (
    ConfigError,
    InvalidField,
    LivemonError,
    MonitoringUnavailable,
)
from livemon.feedback import FeedbackLoop, Policy
from livemon.monitor import Counters, Monitor
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, EventType

try:
    __version__ = version("livemon")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "LABEL_DTYPE",
    "RECORD_DTYPE",
    "Config",
    "ConfigError",
    "Coordinator",
    "Counters",
    "EventType",
    "FeedbackLoop",
    "InvalidField",
    "LivemonError",
    "Monitor",
    "MonitoringUnavailable",
    "Policy",
    "RequestContext",
    "__version__",
    "load_config",
]
