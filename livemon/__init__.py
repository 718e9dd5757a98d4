"""
Live, near-zero-overhead monitoring for a multi-agent coordinator.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from livemon.config import Config, load_config
from livemon.context import RequestContext
from livemon.coordinator import AgentResult, Coordinator, Result
from livemon.exceptions import (
    ConfigError,
    InvalidField,
    LivemonError,
    MonitoringUnavailable,
)
from livemon.feedback import FeedbackLoop, Policy
from livemon.monitor import Counters, Monitor
from livemon.record import (
    AGENT_RUN_DTYPE,
    LABEL_DTYPE,
    RECORD_DTYPE,
    AgentOutcome,
    EventType,
)

try:
    __version__ = version("livemon")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AGENT_RUN_DTYPE",
    "LABEL_DTYPE",
    "RECORD_DTYPE",
    "AgentOutcome",
    "AgentResult",
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
    "Result",
    "__version__",
    "load_config",
]
