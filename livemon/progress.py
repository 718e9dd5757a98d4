"""
A progress bar for long commands (migrate, backup, retain) on a terminal:
done of total, rate and time left on one redrawn line; nothing at all
when the stream is not a terminal (piped, a log, cron).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TextIO

REDRAW_EVERY_S = 0.2
"""At most this often: drawing costs, and a faster flicker tells nothing."""


class ProgressBar:
    """Draws ``label [#####.....]  45%  450,000/1,000,000 rows  95,000
    rows/s  5 s left`` on ``stream``, redrawn in place with ``\\r``.

    Call it as ``bar(done, total)`` (it is the progress callback the long
    work functions take); ``close()`` ends the line.  Use ``for_terminal``
    to get one only where a person watches.
    """

    def __init__(
        self,
        label: str,
        unit: str = "rows",
        *,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not label or not unit:
            raise ValueError("label and unit must be non-empty")
        self.label = label
        self.unit = unit
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._width = 0

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` (redrawn at most every
        ``REDRAW_EVERY_S``, and always when done reaches total).

        Raises:
            ValueError: a negative count.
        """
        if done < 0 or total < 0:
            raise ValueError(f"counts must be >= 0, not {done}/{total}")
        now = self._clock()
        finished = done >= total
        if (
            not finished
            and self._drawn_at is not None
            and now - self._drawn_at < REDRAW_EVERY_S
        ):
            return
        self._drawn_at = now
        columns = _columns(self._stream)
        line = self.line(done, total, now - self._started, columns - 1)
        pad = " " * max(0, self._width - len(line))  # erase a longer one
        self._width = len(line)
        self._stream.write(f"\r{line}{pad}")
        self._stream.flush()

    def line(self, done: int, total: int, elapsed_s: float, width: int) -> str:
        """The text of the bar, at most ``width`` characters."""
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        figures = f"{done:,}/{total:,} {self.unit}"
        if rate > 0:
            figures += f"  {rate:,.0f} {self.unit}/s"
            if done < total:
                figures += f"  {_duration(max(total - done, 0) / rate)} left"
        fraction = min(done / total, 1.0) if total else 1.0
        head = f"{self.label} "
        tail = f" {fraction:4.0%}  {figures}"
        room = width - len(head) - len(tail) - 2
        if room < 10:  # too narrow for a bar: the figures alone
            return (head + tail.strip())[:width]
        filled = int(room * fraction)
        return f"{head}[{'#' * filled}{'.' * (room - filled)}]{tail}"

    def close(self) -> None:
        """End the bar's line, so what is printed next starts afresh."""
        if self._drawn_at is not None:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn_at = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def for_terminal(
    label: str, unit: str = "rows", stream: TextIO | None = None
) -> ProgressBar | None:
    """A bar on ``stream`` (standard error by default) when it is a
    terminal; None otherwise, so piped output stays clean."""
    out = sys.stderr if stream is None else stream
    try:
        interactive = out.isatty()
    except ValueError:  # closed
        interactive = False
    return ProgressBar(label, unit, stream=out) if interactive else None


def _columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (80 if unknown:
    also when it says 0, as a pty whose size was never set does)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size((80, 24))[0]


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 7 min``."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


@contextlib.contextmanager
def shown(label: str, unit: str = "rows") -> Iterator[ProgressBar | None]:
    """``for_terminal`` on standard error, its line ended however the
    work ends (an error message then starts on a line of its own)."""
    bar = for_terminal(label, unit)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
