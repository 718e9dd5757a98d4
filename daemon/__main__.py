"""
``python -m daemon``: the ``livemon-daemon`` command.
"""

from __future__ import annotations

from daemon.cli import cli

cli(prog_name="livemon-daemon")
