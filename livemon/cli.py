"""
The ``livemon`` command for people: migrate legacy databases, back up the
unified one.  Only parsing and error translation live here.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import click

from livemon import reading, render
from livemon.config import load_config
from livemon.exceptions import (
    BadTimeRange,
    ConfigError,
    LivemonError,
    UnknownName,
)
from livemon.legacy import LAYOUTS, load_mapping
from livemon.migrate import TableReport, migrate
from livemon.report import build_report


@contextmanager
def errors_for_people() -> Iterator[None]:
    """Expected failures become messages and exit codes, no traceback."""
    try:
        yield
    except (ConfigError, BadTimeRange, UnknownName) as exc:
        raise click.UsageError(str(exc)) from exc
    except LivemonError as exc:
        raise click.ClickException(str(exc)) from exc


def database(db: str | None, config_file: str | None) -> str:
    """The unified database path from flags, LIVEMON_*, config file."""
    with errors_for_people():
        return load_config({"db": db, "config": config_file}).db


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="livemon")
def cli() -> None:
    """livemon: live monitoring for a multi-agent coordinator."""


@cli.command(name="migrate")
@click.argument(
    "sources", nargs=-1, required=True, type=click.Path(dir_okay=False)
)
@db_option
@config_option
@click.option(
    "--mapping",
    type=click.Path(dir_okay=False),
    help="TOML file naming other tables and columns.",
)
@click.option("--dry-run", is_flag=True, help="Report without writing.")
@click.option(
    "--archive-dir",
    type=click.Path(file_okay=False),
    help="Where legacy copies go (default: legacy-archive/ beside "
    "the database).",
)
def migrate_command(
    sources: tuple[str, ...],
    db: str | None,
    config_file: str | None,
    mapping: str | None,
    dry_run: bool,
    archive_dir: str | None,
) -> None:
    """Migrate legacy SQLite databases (routing_decisions.db,
    quality_metrics.db, agent_performance.db) into the unified one.

    Exits 1 when anything does not reconcile.
    """
    path = database(db, config_file)
    with errors_for_people():
        layouts = load_mapping(mapping) if mapping else LAYOUTS
        reports = migrate(
            path,
            list(sources),
            layouts=layouts,
            dry_run=dry_run,
            archive_dir=archive_dir,
        )
    for report in reports:
        click.echo(_report_text(report, dry_run))
    if not all(r.reconciled for r in reports):
        raise click.ClickException("migration did not reconcile (see above)")
    verb = "would migrate" if dry_run else "migrated into"
    click.echo(
        f"{verb} {path}: "
        f"{sum(r.migrated for r in reports)} rows, "
        f"{sum(r.added for r in reports)} new"
    )


def _report_text(report: TableReport, dry_run: bool) -> str:
    lines = [
        f"{report.path} [{report.table}, {report.kind}]: read {report.read}, "
        f"migrated {report.migrated} ({report.added} new), rejected "
        f"{sum(report.rejected.values())}"
    ]
    for reason, count in sorted(report.rejected.items()):
        lines.append(f"    rejected {count:>7}  {reason}")
    for check in report.checks:
        mark = "ok " if check.ok else "MISMATCH"
        lines.append(
            f"    {mark:<8} {check.name}: source {check.source:g}, "
            f"database {check.destination:g}"
        )
    if report.archived_to:
        lines.append(f"    archived to {report.archived_to} (read-only)")
    elif not dry_run:
        lines.append("    not archived: the migration did not reconcile")
    return "\n".join(lines)


@cli.command()
@click.argument("destination", type=click.Path(dir_okay=False))
@db_option
@config_option
def backup(destination: str, db: str | None, config_file: str | None) -> None:
    """Copy the unified database online (safe while the daemon writes)."""
    path = database(db, config_file)
    if not os.path.isfile(path):
        raise click.ClickException(f"{path}: no such database")
    if os.path.exists(destination):
        raise click.UsageError(f"{destination} exists: name a new file")
    try:
        with sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=5
        ) as source:
            target = sqlite3.connect(destination)
            source.backup(target, pages=1024)
            verdict = target.execute("PRAGMA integrity_check").fetchone()[0]
            target.close()
    except sqlite3.Error as exc:
        raise click.ClickException(f"backup of {path} failed: {exc}") from exc
    if verdict != "ok":
        raise click.ClickException(
            f"the copy fails integrity_check: {verdict}"
        )
    click.echo(f"backed up {path} to {destination} (integrity_check ok)")


def _open(
    ctx: click.Context, db: str | None, config_file: str | None
) -> sqlite3.Connection:
    """The database, read-only, closed when the command ends."""
    path = database(db, config_file)
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


since_option = click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Start: now, an age (30m, 6h, 7d, 2w) or a UTC date/time.",
)
until_option = click.option(
    "--until", default="now", show_default=True, help="End, as --since."
)


@cli.command()
@db_option
@config_option
@since_option
@until_option
@click.option(
    "--per",
    type=click.Choice(["hour", "day", "auto"]),
    default="auto",
    show_default=True,
    help="Trend bucket; auto: hours up to three days, else days.",
)
@click.option("--agent", help="Only requests that used this agent.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--table",
    "only",
    type=click.Choice(
        [
            "agents",
            "categories",
            "trend",
            "errors",
            "overrides",
            "adjustments",
            "alerts",
        ]
    ),
    help="With --format csv: just this table, as plain CSV.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1))
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    help="Also draw the latency and quality trend into this SVG file.",
)
@click.pass_context
def report(
    ctx: click.Context,
    db: str | None,
    config_file: str | None,
    since: str,
    until: str,
    per: str,
    agent: str | None,
    output: str,
    only: str | None,
    top: int,
    plot: str | None,
) -> None:
    """Routing report over a time range: per agent and category, trends,
    top errors and override reasons, adjustments and alerts."""
    with errors_for_people():
        span = reading.TimeRange.parse(since, until)
    if per == "auto":
        per = "hour" if span.end_ns - span.start_ns <= 3 * 86400e9 else "day"
    connection = _open(ctx, db, config_file)
    path = database(db, config_file)
    with reading_errors(path):
        result = build_report(
            connection, reading.Labels(connection), span, per, agent, top
        )
    if output == "json":
        click.echo(render.report_json(result))
    elif output == "csv":
        click.echo(render.report_csv(result, only), nl=False)
    else:
        click.echo(
            f"livemon report {reading.format_ns(span.start_ns)} .. "
            f"{reading.format_ns(span.end_ns)} UTC ({path})\n"
        )
        click.echo(render.report_text(result), nl=False)
    if plot:
        with open(plot, "w") as file:
            file.write(render.trend_svg(result))
        click.echo(f"trend chart written to {plot}", err=True)
