"""
Exceptions raised by ringbuf: one base, each subclass also a built-in
category.
"""

from __future__ import annotations

__all__ = [
    "LaneIndexError",
    "LanesExhausted",
    "RecordDtypeError",
    "RingArgumentError",
    "RingArgumentTypeError",
    "RingClosed",
    "RingCorrupt",
    "RingError",
    "RingExists",
    "RingNameError",
    "RingNotFound",
    "RingUntrusted",
    "UnsupportedPlatform",
]


class RingError(Exception):
    """Base of every error ringbuf raises."""


class RingNameError(RingError, ValueError):
    """A ring name is unsafe (path separators, odd characters) or too long."""


class RingArgumentError(RingError, ValueError):
    """An argument is out of its range: the message gives the range."""


class RingArgumentTypeError(RingError, TypeError):
    """An argument has the wrong type (an int is expected)."""


class LaneIndexError(RingError, IndexError):
    """A lane number is not one of the ring's lanes."""


class RingClosed(RingError, ValueError):
    """The ring or writer was closed: attach again or create a new writer."""


class RingNotFound(RingError, FileNotFoundError):
    """No segment exists under that name: create the ring first."""


class RingExists(RingError, FileExistsError):
    """A segment already exists under that name: attach to it instead."""


class RecordDtypeError(RingError, TypeError):
    """A record or dtype does not match the ring's record dtype."""


class RingCorrupt(RingError, ValueError):
    """The segment header is damaged or of another layout version."""


class LanesExhausted(RingError, RuntimeError):
    """Every lane is held by a live producer: create a ring with more lanes."""


class RingUntrusted(RingError, PermissionError):
    """A segment or lock file another user may have planted or can read.

    The message names its owner and mode: remove it (as root or its
    owner), or choose another ring name.
    """


class UnsupportedPlatform(RingError, RuntimeError):
    """The CPU's memory order is weaker than the ring needs (not x86-64)."""
