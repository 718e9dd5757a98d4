"""
``python -m livemon``: the ``livemon`` command.
"""

from __future__ import annotations

from livemon.cli import cli

if __name__ == "__main__":
    cli(prog_name="livemon")
