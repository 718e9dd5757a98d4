"""
Reading the unified database while the daemon writes it: a read-only
connection with clear errors, label names, and time ranges people type.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sqlite3
import time

from livemon.db import rollup, schema
from livemon.exceptions import BadTimeRange, DatabaseUnavailable, UnknownName
from livemon.record import NO_LABEL, label_id

BUSY_TIMEOUT_MS = 500  # a report answers within a second, or says why
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
TIME_FORMS = (
    "'now', an age such as 30m, 6h, 7d or 2w, or a UTC date or time such "
    "as 2026-11-27 or 2026-11-27T14:30"
)


def open_database(path: str) -> sqlite3.Connection:
    """Open the unified database read-only, checked and ready for reports.

    Raises:
        DatabaseUnavailable: missing, locked, damaged, not a livemon
            database, or older than this livemon; the message says what
            to do in each case.
    """
    if not os.path.isfile(path):
        raise DatabaseUnavailable(
            f"no database at {path}: start the daemon (livemon-daemon "
            "start) or name the database with --db"
        )
    try:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as exc:
        raise explain(path, exc) from exc
    try:
        missing = schema.pending(db)
    except sqlite3.Error as exc:
        db.close()
        raise explain(path, exc) from exc
    if missing:
        db.close()
        what = (
            "is not a livemon database"
            if len(missing) == len(schema.MIGRATIONS)
            else f"predates this livemon (it lacks {', '.join(missing)})"
        )
        raise DatabaseUnavailable(
            f"{path} {what}: start the daemon once on it (it upgrades the "
            "schema), or name the right database with --db"
        )
    rollup.ensure_math(db)
    return db


def explain(path: str, exc: sqlite3.Error) -> DatabaseUnavailable:
    """A person's version of an SQLite error met while reading ``path``."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DatabaseUnavailable(
            f"{path} is locked by another process ({text}); the daemon "
            "never holds it this long: find the process that does (fuser "
            f"{path}) and try again"
        )
    if "not a database" in text or "malformed" in text:
        return DatabaseUnavailable(
            f"{path} is not a readable SQLite database ({text}): restore "
            "it from a backup or name another with --db"
        )
    return DatabaseUnavailable(f"cannot read {path}: {text}")


class Labels:
    """The names behind label ids, and the agents that can be asked for."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._texts: dict[int, str] = {NO_LABEL: ""}

    def text(self, label: int) -> str:
        """The text of ``label``, or its id in hex if not stored (yet)."""
        if label not in self._texts:
            row = self._db.execute(
                "SELECT text FROM labels WHERE label_id = ?", (label,)
            ).fetchone()
            if row is None:
                return unknown_name(label)
            self._texts[label] = row[0]
        return self._texts[label]

    def learn(self, texts: dict[int, str]) -> None:
        """Add names known from elsewhere (the labels ring)."""
        for label, text in texts.items():
            self._texts.setdefault(label, text)

    def members(self, agents: int) -> list[str]:
        """The distinct agent names in the list label ``agents``."""
        if agents == NO_LABEL:
            return []
        text = self.text(agents)
        try:
            names = json.loads(text)
        except ValueError:
            return [text]
        if not isinstance(names, list):
            return []
        return list(dict.fromkeys(str(n) for n in names))

    def agents(self) -> dict[str, int]:
        """Every name in a stored list (agents, and intent domains too), or
        with stored runs: name -> label id.  Quick to look a name up in."""
        rows = self._db.execute(
            "SELECT member FROM list_members UNION "
            "SELECT agent FROM rollup_agent_runs WHERE agent != 0"
        )
        return {self.text(member): member for (member,) in rows}

    def agents_used(self) -> list[str]:
        """The agents stored requests used, or that have stored runs, by
        name: what an unknown agent's message lists (domains left out)."""
        rows = self._db.execute(
            "SELECT agent FROM rollup WHERE agent != 0 UNION "
            "SELECT agent FROM rollup_agent_runs WHERE agent != 0"
        )
        return sorted(self.text(agent) for (agent,) in rows)

    def agent(self, name: str) -> int:
        """The label id of agent ``name``.

        Raises:
            UnknownName: no stored request ever used ``name``.
        """
        known = self.agents()
        if name not in known:
            used = ", ".join(self.agents_used()) or "(none yet)"
            raise UnknownName(
                f"unknown agent {name!r}: no stored request used it; "
                f"known agents: {used}"
            )
        return known[name]

    def category(self, name: str) -> int:
        """The label id of category ``name``.

        Raises:
            UnknownName: no stored request had that category.
        """
        rows = self._db.execute("SELECT DISTINCT category FROM rollup")
        known = {self.text(c): c for (c,) in rows if c != NO_LABEL}
        if name not in known:
            raise UnknownName(
                f"unknown category {name!r}; known categories: "
                f"{', '.join(sorted(known)) or '(none yet)'}"
            )
        return label_id(name)


def unknown_name(label: int) -> str:
    """How a label id whose text is unknown is shown: as in the database's
    ``monitoring_events`` (``schema.unknown_text``)."""
    return schema.unknown_text(label)


@dataclasses.dataclass(frozen=True)
class TimeRange:
    """A half-open span of time, [start_ns, end_ns)."""

    start_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        if self.start_ns >= self.end_ns:
            raise BadTimeRange(
                f"--since ({format_ns(self.start_ns)}) must be before "
                f"--until ({format_ns(self.end_ns)})"
            )

    @classmethod
    def parse(
        cls, since: str, until: str = "now", now_ns: int | None = None
    ) -> TimeRange:
        """Read ``--since`` and ``--until`` as people write them.

        Raises:
            BadTimeRange: a value is unreadable, or since is not before
                until; the message shows the accepted forms.
        """
        now = time.time_ns() if now_ns is None else now_ns
        return cls(parse_moment(since, now), parse_moment(until, now))


_LAST_NS = 2**63 - 1  # events store ns since 1970 as SQLite integers


def parse_moment(text: str, now_ns: int) -> int:
    """A moment in ns: ``now``, an age (``6h``) or a UTC date or time.

    Raises:
        BadTimeRange: unreadable, or outside 1970 .. 2262 (what a
            timestamp in ns can hold); the message shows the forms.
    """
    value = text.strip().lower()
    if value == "now":
        return now_ns
    if match := _AGO.match(value):
        seconds = float(match[1]) * _UNITS_S[match[2]]
        moment_ns = now_ns - seconds * 1e9
    else:
        try:
            moment = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise BadTimeRange(
                f"cannot read the time {text!r}: use {TIME_FORMS}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        moment_ns = moment.timestamp() * 1e9
    if not 0 <= moment_ns <= _LAST_NS:
        raise BadTimeRange(
            f"the time {text!r} is outside what events can carry (1970-01-01"
            " to 2262-04-11 UTC): give a shorter age or a nearer date"
        )
    if match:
        return int(moment_ns)
    return int(moment.timestamp() * 1e6) * 1000


def format_ns(timestamp_ns: int) -> str:
    """A moment as people read it: UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(timestamp_ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
