"""
What the ``livemon`` commands share: error translation, the options that
name the ring, database and config file, and opening them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from livemon.config import Config, load_config
from livemon.db import reading
from livemon.exceptions import (
    BadTimeRange,
    ConfigError,
    LivemonError,
    UnknownName,
)

MOST_ROWS = 10**7
"""The most rows a count option (--top, --lines) asks for: past SQLite's
integers is an overflow, and no terminal shows more."""
MOST_SECONDS = 86400.0
"""The longest pause an --interval may ask for (time_t bounds a sleep)."""


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan, which every range lets through
    (all comparisons with it are false)."""

    def convert(
        self,
        value: Any,
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


@contextmanager
def errors_for_people() -> Iterator[None]:
    """Expected failures become messages and exit codes, no traceback."""
    try:
        yield
    except (ConfigError, BadTimeRange, UnknownName) as exc:
        raise click.UsageError(str(exc)) from exc
    except LivemonError as exc:
        raise click.ClickException(str(exc)) from exc
    except PermissionError as exc:
        raise click.ClickException(
            f"permission denied: {exc.filename or exc}. Ask for the "
            "group that may read livemon's ring and database (LIVEMON_GROUP"
            "; add yourself to it), or run as their owner"
        ) from exc


def database(
    db: str | None, config_file: str | None, find_system: bool = False
) -> str:
    """The unified database path from flags, LIVEMON_*, config file.

    ``find_system``: for readers, the system service's database when the
    user has none of their own (``load_config``).
    """
    return config_for(None, db, config_file, find_system=find_system).db


db_option = click.option(
    "--db",
    help="Unified database (env LIVEMON_DB; default in the state directory).",
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML config file (env LIVEMON_CONFIG).",
)


ring_option = click.option(
    "--ring", help="The coordinators' ring (env LIVEMON_RING)."
)


def config_for(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    find_system: bool = False,
) -> Config:
    """The configuration from flags, LIVEMON_*, config file, defaults."""
    with errors_for_people():
        return load_config(
            {"ring": ring, "db": db, "config": config_file},
            find_system=find_system,
        )


def open_database(ctx: click.Context, path: str) -> sqlite3.Connection:
    """The database, read-only, closed when the command ends."""
    with errors_for_people():
        connection = reading.open_database(path)
    ctx.call_on_close(connection.close)
    return connection


@contextmanager
def reading_errors(path: str) -> Iterator[None]:
    """SQLite failures in the middle of a query, told as open() tells them."""
    with errors_for_people():
        try:
            yield
        except sqlite3.Error as exc:
            raise reading.explain(path, exc) from exc
