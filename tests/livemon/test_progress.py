"""
Progress bars: the line they draw, how often, and the long commands
(migrate, backup, retain) showing one on a real terminal (a pty) and
staying quiet when piped.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import sqlite3
import subprocess
import sys

import pytest

from livemon import progress
from livemon.progress import ProgressBar, for_terminal
from tests.livemon.migrate import legacy_fixtures as fx

GOOD = 300  # legacy rows, plus 3 bad ones


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    """A hand-moved clock."""
    return Clock()


class TestProgressBar:
    def test_line_tells_fraction_rate_and_time_left(self):
        """Half done in 5 s: 50%, the counts, the rate and 5 s left."""
        bar = ProgressBar("migrate", stream=io.StringIO())
        line = bar.line(500_000, 1_000_000, 5.0, 100)
        assert line.startswith("migrate [") and len(line) <= 100
        assert "50%" in line and "500,000/1,000,000 rows" in line
        assert "100,000 rows/s" in line and "5 s left" in line
        assert line.count("#") == line.count(".") or "#" in line

    def test_finished_line_has_no_time_left(self):
        """At the end the bar is full and says nothing of time left."""
        line = ProgressBar("x", "pages", stream=io.StringIO()).line(
            40, 40, 2.0, 80
        )
        assert "100%" in line and "left" not in line and "." not in line
        assert "40/40 pages  20 pages/s" in line

    def test_narrow_terminal_drops_the_bar(self):
        """Too narrow for a bar: the figures alone, cut to the width."""
        line = ProgressBar("retain", stream=io.StringIO()).line(1, 10, 1.0, 30)
        assert "[" not in line and len(line) <= 30

    def test_long_durations_read_as_minutes_and_hours(self):
        """Time left is written as people read it."""
        assert progress._duration(42.2) == "42 s"
        assert progress._duration(185) == "3 min 5 s"
        assert progress._duration(7620) == "2 h 7 min"

    def test_redraws_at_most_every_interval_and_at_the_end(self, clock):
        """Calls closer than REDRAW_EVERY_S are skipped, except the one
        that finishes; close() ends the line."""
        stream = io.StringIO()
        bar = ProgressBar("m", stream=stream, clock=clock)
        bar(1, 10)
        clock.now += progress.REDRAW_EVERY_S / 2
        bar(2, 10)
        clock.now += progress.REDRAW_EVERY_S
        bar(3, 10)
        bar(10, 10)
        bar.close()
        draws = stream.getvalue().split("\r")[1:]
        assert [d.split("/")[0].split()[-1] for d in draws] == ["1", "3", "10"]
        assert stream.getvalue().endswith("\n")

    def test_a_shorter_line_erases_the_longer_one(self, clock):
        """The redrawn line is padded over what the previous one left."""
        stream = io.StringIO()
        bar = ProgressBar("m", stream=stream, clock=clock)
        clock.now += 1
        bar(5, 1_000_000)  # a long "time left"
        clock.now += 1
        bar(1_000_000, 1_000_000)
        first, second = stream.getvalue().split("\r")[1:]
        assert len(second) >= len(first)

    def test_a_terminal_without_a_size_gets_80_columns(self):
        """A pty whose size was never set (docker exec -t, some CI
        runners) reports 0 columns: the line is fitted to 80, not left
        whole to wrap on every redraw."""
        master, slave = pty.openpty()  # a fresh pty's size is 0 x 0
        try:
            assert os.get_terminal_size(slave).columns == 0
            with open(slave, "w", closefd=False) as stream:
                bar = ProgressBar("migrate " + "x" * 200, stream=stream)
                bar(5, 10)
                stream.flush()
            drawn = os.read(master, 65536).decode()
        finally:
            os.close(slave)
            os.close(master)
        assert 0 < len(drawn.strip("\r\n")) <= 79

    def test_bad_input_is_refused(self):
        """Negative counts and empty names are errors that say so."""
        bar = ProgressBar("m", stream=io.StringIO())
        with pytest.raises(ValueError, match=">= 0"):
            bar(-1, 10)
        with pytest.raises(ValueError, match="non-empty"):
            ProgressBar("", stream=io.StringIO())

    def test_no_bar_for_a_stream_that_is_not_a_terminal(self, tmp_path):
        """A pipe, a file or a closed stream gets no bar."""
        assert for_terminal("m", stream=io.StringIO()) is None
        with open(tmp_path / "log", "w") as log:
            assert for_terminal("m", stream=log) is None
        closed = io.StringIO()
        closed.close()
        assert for_terminal("m", stream=closed) is None


def run(argv, *, terminal):
    """Run a command with standard error on a pty (``terminal``) or a
    pipe; return (exit code, standard error as text)."""
    if not terminal:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False
        )
        return done.returncode, done.stderr
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child has closed it
        while data := os.read(master, 65536):
            chunks.append(data)
    os.close(master)
    child.communicate(timeout=120)
    return child.returncode, b"".join(chunks).decode()


@pytest.fixture
def migrated(tmp_path):
    """A legacy file and the unified database it was migrated into."""
    legacy = tmp_path / "agent_performance.db"
    fx.performance_db(legacy, good=GOOD)
    unified = tmp_path / "state" / "unified.db"
    code, _ = run(
        [
            sys.executable,
            "-m",
            "livemon",
            "migrate",
            str(legacy),
            "--db",
            str(unified),
        ],
        terminal=False,
    )
    assert code == 0
    return legacy, unified


@pytest.mark.parametrize("terminal", [True, False], ids=["pty", "piped"])
class TestLongCommands:
    def test_migrate(self, tmp_path, terminal):
        """livemon migrate counts the legacy rows it reads."""
        legacy = tmp_path / "agent_performance.db"
        fx.performance_db(legacy, good=GOOD)
        code, err = run(
            [
                sys.executable,
                "-m",
                "livemon",
                "migrate",
                str(legacy),
                "--db",
                str(tmp_path / "u.db"),
            ],
            terminal=terminal,
        )
        assert code == 0, err
        shown = f"{GOOD + 3}/{GOOD + 3} rows" in err and "100%" in err
        assert shown == terminal and ("\r" in err) == terminal

    def test_backup(self, migrated, tmp_path, terminal):
        """livemon backup counts the pages it copies, and the copy is
        whole."""
        _, unified = migrated
        copy = tmp_path / "copy.db"
        code, err = run(
            [
                sys.executable,
                "-m",
                "livemon",
                "backup",
                str(copy),
                "--db",
                str(unified),
            ],
            terminal=terminal,
        )
        assert code == 0, err
        assert (" pages" in err and "100%" in err) == terminal
        assert ("\r" in err) == terminal
        with contextlib.closing(sqlite3.connect(copy)) as db:
            (count,) = db.execute("SELECT count(*) FROM events").fetchone()
        assert count == GOOD

    def test_retain(self, migrated, terminal):
        """livemon-daemon retain counts the rows it moves: the events and
        the agent runs migrated from the performance log."""
        _, unified = migrated
        code, err = run(
            [
                sys.executable,
                "-m",
                "daemon",
                "retain",
                "--db",
                str(unified),
                "--older-than-days",
                "1",
            ],
            terminal=terminal,
        )
        assert code == 0, err
        moved = 2 * GOOD - 2  # each table's newest row stays (its id)
        assert (f"{moved}/{moved} rows" in err) == terminal
        assert ("\r" in err) == terminal
