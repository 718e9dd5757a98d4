"""
Exceptions raised by livemon: one base, each subclass also a built-in
category.
"""

from __future__ import annotations

__all__ = [
    "BadTimeRange",
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidField",
    "LegacyError",
    "LivemonError",
    "MonitoringUnavailable",
    "SpillConfigError",
    "SpillDirError",
    "SpillDtypeError",
    "UnknownName",
]


class LivemonError(Exception):
    """Base of every error livemon raises."""


class ConfigError(LivemonError, ValueError):
    """A configuration value or file is wrong; the message names it."""


class LegacyError(LivemonError, ValueError):
    """A legacy database cannot be migrated; the message says what to do."""


class MonitoringUnavailable(LivemonError, RuntimeError):
    """(strict mode) The ring cannot be reached or written."""


class InvalidField(LivemonError, ValueError):
    """(strict mode) A value given to a ``log_*`` call is not acceptable.

    Attributes:
        field: the keyword argument that was wrong.
        reason: what was wrong with it and what is expected.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidField], tuple[str, str]]:
        return (InvalidField, (self.field, self.reason))


class DatabaseUnavailable(LivemonError, OSError):
    """The unified database cannot be read: missing, locked, not ours or
    too old; the message says which and what to do."""


class BadTimeRange(LivemonError, ValueError):
    """A ``--since``/``--until`` value cannot be read, or they are out of
    order; the message shows the accepted forms."""


class UnknownName(LivemonError, LookupError):
    """An agent or category name never seen in the database; the message
    lists the known ones."""


class SpillConfigError(LivemonError, ValueError):
    """A spill argument is out of range (sizes, caps, mode, ring name,
    epoch or lane); the message names it and the accepted range."""


class SpillDtypeError(LivemonError, TypeError):
    """The record dtype is not a structured dtype of plain numbers and
    bytes, as a ring's records must be."""


class SpillDirError(LivemonError, OSError):
    """The spill directory cannot be created or is not a directory:
    create it, owned by the coordinators' user, or configure another."""
