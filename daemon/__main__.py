"""
``python -m daemon``: the ``livemon-daemon`` command.
"""

from __future__ import annotations

from daemon.cli import cli

if __name__ == "__main__":
    cli(prog_name="livemon-daemon")
