"""
The ``livemon`` command for people: the only place livemon imports click.
"""

from __future__ import annotations

from livemon.cli.main import cli

__all__ = ["cli"]
