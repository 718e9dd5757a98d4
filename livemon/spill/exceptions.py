"""
Errors the spill files raise at construction (the hot path never raises):
subclasses of ``LivemonError`` with a built-in category each.
"""

from __future__ import annotations

from livemon.exceptions import LivemonError

__all__ = ["SpillConfigError", "SpillDirError", "SpillDtypeError"]


class SpillConfigError(LivemonError, ValueError):
    """A spill argument is out of range (sizes, caps, mode, ring name,
    epoch or lane); the message names it and the accepted range."""


class SpillDtypeError(LivemonError, TypeError):
    """The record dtype is not a structured dtype of plain numbers and
    bytes, as a ring's records must be."""


class SpillDirError(LivemonError, OSError):
    """The spill directory cannot be created or is not a directory:
    create it, owned by the coordinators' user, or configure another."""
