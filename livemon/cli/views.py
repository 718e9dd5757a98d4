"""
The ``livemon`` commands that show figures: ``report`` and ``tail`` from
the database, ``stats`` and ``top`` from the rings.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import click

from livemon.cli._common import (
    MOST_ROWS,
    MOST_SECONDS,
    Finite,
    config_for,
    config_option,
    database,
    db_option,
    errors_for_people,
    open_database,
    reading_errors,
    ring_option,
)
from livemon.db import reading, schema
from livemon.exceptions import LivemonError
from livemon.views import live, render, top
from livemon.views import tail as events
from livemon.views.report import build_report

since_option = click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Start: now, an age (30m, 6h, 7d, 2w) or a UTC date/time.",
)
until_option = click.option(
    "--until", default="now", show_default=True, help="End, as --since."
)


@click.command()
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
            "hosts",
            "agent_hosts",
            "agent_runs",
        ]
    ),
    help="With --format csv: just this table, as plain CSV.",
)
@click.option(
    "--clickhouse",
    "clickhouse_url",
    metavar="URL",
    help="Report every host's events from ClickHouse (as the daemon's "
    "sink ships them), e.g. clickhouse://127.0.0.1:9000/livemon.",
)
@click.option(
    "--top",
    default=10,
    show_default=True,
    type=click.IntRange(1, MOST_ROWS),
)
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
    clickhouse_url: str | None,
) -> None:
    """Routing report over a time range: per agent and category, trends,
    top errors and override reasons, adjustments and alerts (with
    --clickhouse: across hosts, with a per-host breakdown)."""
    with errors_for_people():
        span = reading.TimeRange.parse(since, until)
    if per == "auto":
        per = "hour" if span.end_ns - span.start_ns <= 3 * 86400e9 else "day"
    if clickhouse_url:
        from livemon.views import clickhouse

        with errors_for_people():
            client, path = clickhouse.connect(clickhouse_url)
            ctx.call_on_close(client.disconnect)
            result = clickhouse.build_clickhouse_report(
                client, path, span, per, agent, top
            )
    else:
        path = database(db, config_file, find_system=True)
        connection = open_database(ctx, path)
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
        try:
            with open(plot, "w") as file:
                file.write(render.trend_svg(result))
        except OSError as exc:
            raise click.ClickException(
                f"cannot write the chart to {plot}: {exc.strerror}"
            ) from exc
        click.echo(f"trend chart written to {plot}", err=True)


@click.command()
@db_option
@config_option
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing events as they come."
)
@click.option(
    "-n",
    "--lines",
    default=10,
    show_default=True,
    type=click.IntRange(0, MOST_ROWS),
    help="Show this many recent events first.",
)
@click.option("--agent", help="Only events where this agent worked.")
@click.option("--category", help="Only events of this intent category.")
@click.option(
    "--success/--failure",
    default=None,
    help="Only successful (or only failed) requests.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object a line."
)
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=Finite(min=0.01, max=MOST_SECONDS),
    help="Seconds between polls with -f.",
)
@click.pass_context
def tail(
    ctx: click.Context,
    db: str | None,
    config_file: str | None,
    follow: bool,
    lines: int,
    agent: str | None,
    category: str | None,
    success: bool | None,
    as_json: bool,
    interval: float,
) -> None:
    """Print the newest events, and with -f keep following the database
    as the daemon commits; Ctrl-C stops."""
    path = database(db, config_file, find_system=True)
    connection = open_database(ctx, path)
    labels = reading.Labels(connection)
    show = events.as_json if as_json else events.describe
    with reading_errors(path):
        which = events.EventFilter(
            labels.agent(agent) if agent else None,
            labels.category(category) if category else None,
            success,
        )
        start = schema.last_event_id(connection)
        for row in events.latest(connection, which, lines):
            click.echo(show(row, labels))
        if not follow:
            return
        try:
            for row in events.follow(connection, which, start, interval):
                click.echo(show(row, labels))
        except KeyboardInterrupt:
            return


class _Names:
    """Label names for live views: from the database, opened once when it
    can be, and from the labels ring for names not stored yet."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._labels: reading.Labels | None = None
        self._connection: sqlite3.Connection | None = None

    def __enter__(self) -> _Names:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __call__(self, snap: live.Snapshot) -> Callable[[int], str]:
        if self._labels is None:
            try:
                connection = reading.open_database(self._path)
            except LivemonError:
                return lambda label: (
                    snap.names.get(label) or (reading.unknown_name(label))
                )
            self._connection = connection
            self._labels = reading.Labels(connection)
        self._labels.learn(snap.names)
        return self._labels.text


@click.command()
@ring_option
@db_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(
    ring: str | None, db: str | None, config_file: str | None, as_json: bool
) -> None:
    """The feedback loop's live statistics from the ring's recent window:
    per agent, per category, and active alerts."""
    config = config_for(ring, db, config_file, find_system=True)
    with errors_for_people():
        snap = live.snapshot(config)
    with _Names(config.db) as names:
        tables = live.stats_tables(snap, names(snap))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "window_records": snap.stats.records,
                    **{t.name: render.json_rows(t) for t in tables},
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    click.echo(
        f"livemon stats  ring {config.ring!r}  window "
        f"{snap.stats.records:,} records\n"
    )
    click.echo("\n\n".join(render.titled(t) for t in tables))


@click.command(name="top")
@ring_option
@db_option
@config_option
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=Finite(min=0.1, max=MOST_SECONDS),
    help="Seconds between refreshes.",
)
@click.option(
    "--iterations",
    type=click.IntRange(1),
    help="Stop after this many frames (default: until q or Ctrl-C).",
)
def top_command(
    ring: str | None,
    db: str | None,
    config_file: str | None,
    interval: float,
    iterations: int | None,
) -> None:
    """A live view like top: daemon health, ring fill, monitoring overhead,
    per agent and per category; q or Ctrl-C quits."""
    config = config_for(ring, db, config_file, find_system=True)
    with errors_for_people(), _Names(config.db) as names:
        top.run(config, names, interval, iterations)
