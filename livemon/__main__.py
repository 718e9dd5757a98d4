"""
``python -m livemon``: the ``livemon`` command.
"""

from __future__ import annotations

from livemon.cli import cli

cli(prog_name="livemon")
