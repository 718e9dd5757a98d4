"""
The ``livemon`` command for people: reports and live views, migration of
legacy databases, backups.  Only parsing and error translation live here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

import click

from livemon.cli import views
from livemon.cli._common import (
    Finite,
    config_for,
    config_option,
    database,
    db_option,
    errors_for_people,
)
from livemon.migrate.legacy import LAYOUTS, load_mapping
from livemon.migrate.migrator import TableReport, migrate
from livemon.progress import ProgressBar, shown

BACKUP_STEP_PAGES = 256
"""Pages a backup step copies: 4 MiB of the daemon's 16 KiB pages."""


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
    with errors_for_people(), shown("migrate") as bar:
        layouts = load_mapping(mapping) if mapping else LAYOUTS
        reports = migrate(
            path,
            list(sources),
            layouts=layouts,
            dry_run=dry_run,
            archive_dir=archive_dir,
            progress=bar,
        )
    for report in reports:
        click.echo(_report_text(report, dry_run))
    if not all(r.reconciled for r in reports):
        raise click.ClickException("migration did not reconcile (see above)")
    rows = sum(r.migrated for r in reports)
    if dry_run:  # what is new is known only once written
        click.echo(f"would migrate into {path}: {rows} rows")
    else:
        added = sum(r.added for r in reports)
        click.echo(f"migrated into {path}: {rows} rows, {added} new")


def _report_text(report: TableReport, dry_run: bool) -> str:
    migrated = (
        f"would migrate {report.migrated}"
        if dry_run
        else f"migrated {report.migrated} ({report.added} new)"
    )
    lines = [
        f"{report.path} [{report.table}, {report.kind}]: read {report.read}, "
        f"{migrated}, rejected {sum(report.rejected.values())}"
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
@click.option(
    "--timeout",
    "timeout_s",
    type=Finite(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Give up (exit 1) when the copy takes longer, e.g. while another "
    "process holds the database locked.",
)
def backup(
    destination: str, db: str | None, config_file: str | None, timeout_s: float
) -> None:
    """Copy the unified database online (safe while the daemon writes).

    The copy is owner-only (group-readable when a group is configured).
    """
    config = config_for(None, db, config_file, find_system=True)
    path = config.db
    if not os.path.isfile(path):
        raise click.ClickException(f"{path}: no such database")
    if os.path.exists(destination):
        raise click.UsageError(f"{destination} exists: name a new file")
    try:
        # Created here with the database's mode: sqlite3 would use 0644.
        os.close(os.open(destination, os.O_CREAT | os.O_EXCL, config.mode))
    except OSError as exc:
        raise click.ClickException(
            f"cannot create {destination}: {exc.strerror}"
        ) from exc
    try:
        with shown("backup", "pages") as bar:
            verdict = _copy(path, destination, timeout_s, bar)
    except (sqlite3.Error, TimeoutError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(destination)
        raise click.ClickException(f"backup of {path} failed: {exc}") from exc
    if verdict != "ok":
        raise click.ClickException(
            f"the copy fails integrity_check: {verdict}"
        )
    click.echo(f"backed up {path} to {destination} (integrity_check ok)")


def _copy(
    path: str,
    destination: str,
    timeout_s: float,
    bar: ProgressBar | None = None,
) -> str:
    """Back ``path`` up into ``destination``; return its integrity_check.

    Copies ``BACKUP_STEP_PAGES`` at a time (told to ``bar``) inside one
    read transaction: one snapshot, so writes by the daemon meanwhile
    never make the copy start over.

    Raises:
        TimeoutError: not done within ``timeout_s`` (sqlite3's backup
            retries a locked database forever by itself).
        sqlite3.Error: the copy failed.
    """
    deadline = time.monotonic() + timeout_s

    def progress(status: int, remaining: int, total: int) -> None:
        if bar is not None:
            bar(total - remaining, total)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"not done after {timeout_s:g} s (the database is locked, "
                "or busier than the copy): try again, or raise --timeout"
            )

    with (
        contextlib.closing(
            sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                timeout=timeout_s,
                isolation_level=None,
            )
        ) as source,
        contextlib.closing(sqlite3.connect(destination)) as target,
    ):
        # The snapshot is taken by the first read and held until close.
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        source.backup(
            target, pages=BACKUP_STEP_PAGES, progress=progress, sleep=0.05
        )
        return str(target.execute("PRAGMA integrity_check").fetchone()[0])


for _command in (
    views.report,
    views.stats,
    views.tail,
    views.top_command,
):
    cli.add_command(_command)
