"""
The ``livemon-daemon`` command: start, stop, status, retain, demo.

Only argument parsing and error translation live here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

import ringbuf
from daemon import preflight, proc, service, sinks
from daemon.exceptions import DaemonError
from daemon.retention import Retention
from daemon.status import permission_hint, status_report, status_text
from daemon.store import Store
from livemon.cli._common import MOST_SECONDS, Finite
from livemon.config import Config, load_config
from livemon.exceptions import ConfigError
from livemon.progress import shown

F = TypeVar("F", bound=Callable[..., Any])
EXIT_NOT_RUNNING = 3  # LSB: "program is not running"
EXIT_HUNG = 4  # LSB: "program or service status is unknown"
HUNG_AFTER_S = 10.0  # the daemon publishes its figures every second


def config_options(command: F) -> F:
    """Add the options every subcommand shares (flags beat LIVEMON_*)."""
    for option in reversed(
        [
            click.option(
                "--ring", help="Ring name (env LIVEMON_RING; default livemon)."
            ),
            click.option(
                "--db",
                help="Database path (env LIVEMON_DB; default in the "
                "state directory).",
            ),
            click.option(
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help="TOML config file (env LIVEMON_CONFIG).",
            ),
        ]
    ):
        command = option(command)
    return command


@contextmanager
def errors_for_people() -> Iterator[None]:
    """Turn expected failures into messages and exit codes, no traceback."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except (DaemonError, ringbuf.RingError) as exc:
        raise click.ClickException(str(exc)) from exc
    except PermissionError as exc:
        raise click.ClickException(permission_hint(exc)) from exc
    except OSError as exc:  # a symlink loop, a full disk: said, not traced
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from exc


def resolve(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    find_system: bool = False,
    **more: Any,
) -> tuple[Config, dict[str, Any]]:
    """Resolve the configuration; return it and the explicit flags.

    ``find_system``: a command that looks at a running daemon falls back
    to the system service's database when the user has none.
    """
    overrides = {"ring": ring, "db": db, "config": config_file, **more}
    with errors_for_people():
        return load_config(overrides, find_system=find_system), overrides


def flags_for_child(overrides: dict[str, Any]) -> list[str]:
    """The explicit flags, to hand on to a detached daemon."""
    argv = []
    for name in (
        "ring",
        "db",
        "config",
        "synchronous",
        "metrics_address",
        "clickhouse_url",
        "otlp_endpoint",
        "alert_webhook_url",
    ):
        if overrides.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(overrides[name])]
    return argv


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="livemon")
def cli() -> None:
    """Drain livemon's shared-memory ring into one SQLite database."""


@cli.command()
@config_options
@click.option(
    "--foreground",
    is_flag=True,
    help="Stay attached (for systemd and containers).",
)
@click.option(
    "--synchronous",
    type=click.Choice(["NORMAL", "FULL"]),
    help="SQLite synchronous mode (env LIVEMON_SYNCHRONOUS).",
)
@click.option(
    "--clickhouse-url",
    help="Also ship events and agent runs to this ClickHouse database, "
    "e.g. clickhouse://127.0.0.1:9000/livemon (env LIVEMON_CLICKHOUSE_URL).",
)
@click.option(
    "--otlp-endpoint",
    help="Also send requests and agent runs as traces to this OTLP/HTTP "
    "collector, e.g. http://127.0.0.1:4318 (env LIVEMON_OTLP_ENDPOINT).",
)
@click.option(
    "--alert-webhook-url",
    help="Also post alerts and adjustments to this webhook "
    "(env LIVEMON_ALERT_WEBHOOK_URL; shape: LIVEMON_ALERT_WEBHOOK_FORMAT).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=Finite(min=0, min_open=True, max=MOST_SECONDS),
    default=30.0,
    show_default=True,
    help="Seconds to wait for a detached daemon to be ready.",
)
@click.option(
    "--metrics-address",
    help="Serve Prometheus metrics on this loopback HOST:PORT, e.g. "
    "127.0.0.1:9464 (env LIVEMON_METRICS_ADDRESS; default off).",
)
def start(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    foreground: bool,
    synchronous: str | None,
    clickhouse_url: str | None,
    otlp_endpoint: str | None,
    alert_webhook_url: str | None,
    timeout_s: float,
    metrics_address: str | None,
) -> None:
    """Start the daemon (detached unless --foreground)."""
    config, overrides = resolve(
        ring,
        db,
        config_file,
        synchronous=synchronous,
        metrics_address=metrics_address,
        clickhouse_url=clickhouse_url,
        otlp_endpoint=otlp_endpoint,
        alert_webhook_url=alert_webhook_url,
    )
    with errors_for_people():
        preflight.check_headroom(config)
        preflight.check_directories(config)
        if foreground:
            logging.basicConfig(
                level=logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            raise SystemExit(service.Service(overrides).run())
        process = proc.start_detached(
            config, flags_for_child(overrides), timeout_s
        )
    click.echo(
        f"livemon daemon started (pid {process.pid}), ring {config.ring!r}, "
        f"database {config.db}, log {config.log_file}"
    )


@cli.command()
@config_options
@click.option(
    "--timeout",
    "timeout_s",
    type=Finite(min=0, min_open=True, max=MOST_SECONDS),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the final drain.",
)
@click.option(
    "--unlink",
    is_flag=True,
    help="Then remove the configuration's shared memory: every ring (agents "
    "too) and the feedback decisions segment, with their lock files (no "
    "coordinator may be attached).",
)
def stop(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    timeout_s: float,
    unlink: bool,
) -> None:
    """Stop the daemon: SIGTERM, then wait for it to drain and exit."""
    config, _ = resolve(ring, db, config_file, find_system=True)
    with errors_for_people():
        pid = proc.stop(config, timeout_s)
        click.echo(f"livemon daemon (pid {pid}) stopped")
        if unlink:
            proc.unlink_rings(config)
            click.echo(f"removed ring {config.ring!r} and its segments")


@cli.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.option(
    "--hung-after",
    "hung_after_s",
    type=Finite(min=0, min_open=True),
    default=HUNG_AFTER_S,
    show_default=True,
    help="Call a live daemon hung when its figures are older (seconds).",
)
def status(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    as_json: bool,
    hung_after_s: float,
) -> None:
    """Show whether the daemon runs, and its figures with their age.

    \b
    Exit status:
      0  running: its figures are fresh
      3  not running
      4  hung: the process lives but published nothing for --hung-after
         seconds (stopped by a signal, stuck, or unable to write its
         status file: see its log); or unknown: this user may not read
         the pidfile or the figures (run it as the daemon's user)
    """
    config, _ = resolve(ring, db, config_file, find_system=True)
    with errors_for_people():
        report = status_report(config, hung_after_s)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(status_text(report))
    if report["state"] == "not running":
        raise SystemExit(EXIT_NOT_RUNNING)
    if report["state"] in ("hung", "unknown"):
        raise SystemExit(EXIT_HUNG)


@cli.command()
@config_options
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Override retention_days (env LIVEMON_RETENTION_DAYS).",
)
def retain(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    older_than_days: float | None,
) -> None:
    """Move old events to monthly archives now (the daemon does it hourly).

    Safe while the daemon runs: each batch is copied and checked in the
    archive before it is deleted from the database.
    """
    config, _ = resolve(ring, db, config_file, retention_days=older_than_days)
    with errors_for_people():
        if not os.path.isfile(config.db):  # a typo made a fresh one
            raise DaemonError(
                f"no database at {config.db}: name the daemon's database "
                "with --db (or LIVEMON_DB)"
            )
        if not os.access(config.db, os.R_OK | os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", config.db)
        try:
            store = Store(config.db, mode=config.mode)
        except sqlite3.Error as exc:
            raise DaemonError(f"cannot open {config.db}: {exc}") from exc
        try:
            # Rows a destination has not shipped yet stay.
            keep_for = sinks.configured(config, config.host)
            with shown("retain") as bar:
                report = Retention(
                    store,
                    config.retention_days,
                    config.archive_dir,
                    sinks=[d.name for d in keep_for if "events" in d.sources],
                ).run(progress=bar)
        except sqlite3.Error as exc:
            raise DaemonError(f"retention stopped: {exc}") from exc
        finally:
            store.close()
    for path, rows in sorted(report.moved.items()):
        click.echo(f"moved {rows} events to {path}")
    click.echo(
        f"{report.total} events older than {config.retention_days:g} days "
        "moved"
    )


@cli.command()
@click.option(
    "--ring", default="livemon-demo", show_default=True, help="Ring name."
)
@click.option(
    "--db",
    default="livemon-demo/unified_monitoring.db",
    show_default=True,
    help="Database path.",
)
@click.option(
    "--coordinators",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Coordinator processes to start.",
)
@click.option(
    "--requests",
    type=click.IntRange(1, 10_000_000),
    default=5000,
    show_default=True,
    help="Requests each coordinator routes.",
)
def demo(ring: str, db: str, coordinators: int, requests: int) -> None:
    """Run the whole pipeline once: daemon, coordinators, what landed.

    Uses its own ring and database (not your LIVEMON_* settings), and
    removes the ring at the end.
    """
    from daemon import demo as demo_run

    for name in [name for name in os.environ if name.startswith("LIVEMON_")]:
        del os.environ[name]  # for the daemon and coordinators it starts too
    config, overrides = resolve(ring, db, None)
    with errors_for_people():
        demo_run.run(
            config,
            flags_for_child(overrides),
            coordinators,
            requests,
            echo=click.echo,
        )
