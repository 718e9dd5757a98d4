"""
``livemon migrate``: legacy databases into the unified one, validated,
reconciled, idempotent, and archived.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import hashlib
import os
import pathlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from livemon.db.rows import ListLabels, insert_events, insert_labels
from livemon.db.schema import last_event_id as last_event_id_of
from livemon.db.transaction import atomic
from livemon.db.writer import open_writer
from livemon.exceptions import LegacyError
from livemon.migrate import agent_runs, bulk
from livemon.migrate.convert import ChunkConverter
from livemon.migrate.legacy import LAYOUTS, Layout, legacy_epoch
from livemon.migrate.reconcile import Check, Totals, compare
from ringbuf import Batch

CHUNK_ROWS = 20_000
BUSY_TIMEOUT_MS = 5000

Progress = Callable[[int, int], None]
"""Told (rows read so far, rows in all) after each chunk."""


@dataclasses.dataclass
class TableReport:
    """What happened to one legacy table."""

    path: str
    kind: str
    table: str
    read: int = 0
    migrated: int = 0
    added: int = 0
    runs_added: int = 0  # agent runs, for a per-agent table
    rejected: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    checks: list[Check] = dataclasses.field(default_factory=list)
    archived_to: str | None = None

    @property
    def reconciled(self) -> bool:
        """Every row accounted for and every aggregate equal."""
        accounted = self.read == self.migrated + sum(self.rejected.values())
        return accounted and all(check.ok for check in self.checks)


@dataclasses.dataclass
class _Source:
    path: str
    layout: Layout
    columns: dict[str, str]  # unified field -> legacy column present
    epoch: int
    rows: int


def migrate(
    db_path: str,
    sources: list[str],
    *,
    layouts: dict[str, Layout] | None = None,
    dry_run: bool = False,
    archive_dir: str | None = None,
    mode: int = 0o600,
    progress: Progress | None = None,
) -> list[TableReport]:
    """Migrate legacy databases into the unified database at ``db_path``.

    Every source is opened and recognised before anything is written, so a
    bad source leaves the unified database unchanged.  Rows are written in
    transactions of ``CHUNK_ROWS`` (the daemon waits at most that long);
    a second run adds nothing.  Sources are archived (copied, checksummed,
    read-only) only when every table reconciles.  A big migration drops
    the secondary indexes of ``events`` and builds them at the end (a run
    that stops half-way leaves them to the next run: ``bulk``).

    Args:
        progress: called as ``progress(rows_read, rows_in_all)`` after
            each chunk (``livemon.progress`` draws it); the library
            itself prints nothing.

    Raises:
        LegacyError: a source is missing, locked, not SQLite, corrupt, or
            of an unknown layout; the message names it and what to do.
    """
    known = layouts or LAYOUTS
    found = [table for path in sources for table in _recognise(path, known)]
    db = None if dry_run else open_unified(db_path, mode)
    try:
        reports = _migrate_all(db, db_path, found, progress)
        if db is not None and all(r.reconciled for r in reports):
            stamp = datetime.datetime.now(datetime.UTC).strftime(
                "%Y%m%dT%H%M%SZ"
            )
            directory = archive_dir or str(
                pathlib.Path(db_path).parent / "legacy-archive"
            )
            archived = {
                path: archive(path, directory, stamp)
                for path in dict.fromkeys(s.path for s in found)
            }
            for report in reports:
                report.archived_to = archived[report.path]
    finally:
        if db is not None:
            db.close()
    return reports


def _migrate_all(
    db: sqlite3.Connection | None,
    db_path: str,
    found: list[_Source],
    progress: Progress | None,
) -> list[TableReport]:
    total = sum(source.rows for source in found)
    done = [0]

    def read(rows: int) -> None:
        done[0] += rows
        if progress is not None:
            progress(done[0], total)

    try:
        with bulk.collector_paused():
            return _migrate_sources(db, found, total, read)
    except sqlite3.OperationalError as exc:
        raise LegacyError(
            f"writing into {db_path} stopped ({exc}): what was "
            "committed stays, the chunk in progress was rolled "
            "back; run the same migrate again when the database "
            "is writable (it adds nothing twice, and builds the "
            "indexes a big migration set aside)"
        ) from exc


def _migrate_sources(
    db: sqlite3.Connection | None,
    found: list[_Source],
    total: int,
    read: Callable[[int], None],
) -> list[TableReport]:
    if db is None:
        return [_migrate_table(None, source, read) for source in found]
    bulk.restore_indexes(db)  # any an interrupted run left missing
    if bulk.should_defer(db, total):
        bulk.drop_indexes(db)
    reports = [_migrate_table(db, source, read) for source in found]
    bulk.restore_indexes(db)
    return reports


def open_unified(path: str, mode: int = 0o600) -> sqlite3.Connection:
    """Open (creating and migrating) the unified database for writing.

    Created exactly as the daemon creates it (``open_writer``), so its
    page size, vacuum mode and permissions are the daemon's.  Waits
    longer for the lock than the daemon: a running daemon holds it for
    one batch at a time.
    """
    try:
        db = open_writer(path, mode=mode, check=False)
    except (sqlite3.Error, OSError) as exc:
        raise LegacyError(
            f"cannot open {path} for writing ({exc}): check the path and "
            "its permissions"
        ) from exc
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


def archive(path: str, directory: str, stamp: str) -> str:
    """Copy a legacy database consistently, checksum it, make both read-only.

    The original is never touched.  Returns the copy's path.
    """
    os.makedirs(directory, exist_ok=True)
    name = pathlib.Path(path).stem
    target = os.path.join(directory, f"{name}.{stamp}.db")
    with (
        contextlib.closing(_open_legacy(path)) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
    digest = hashlib.sha256(pathlib.Path(target).read_bytes()).hexdigest()
    checksum = target + ".sha256"
    pathlib.Path(checksum).write_text(
        f"{digest}  {os.path.basename(target)}\n"
    )
    for item in (target, checksum):
        os.chmod(item, 0o444)
    return target


def _open_legacy(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise LegacyError(f"{path}: no such file; check the path")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    return db


def _recognise(path: str, layouts: dict[str, Layout]) -> list[_Source]:
    db = _open_legacy(path)
    try:
        try:
            check = db.execute("PRAGMA quick_check").fetchall()
            tables = {
                name: sql
                for name, sql in db.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                )
            }
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise LegacyError(
                    f"{path} is locked by another process: stop the logger "
                    "that writes it, then run migrate again"
                ) from exc
            raise LegacyError(f"{path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise LegacyError(
                f"{path} is not a readable SQLite database ({exc}): "
                "check the file, or restore it from a backup"
            ) from exc
        if check != [("ok",)]:
            raise LegacyError(
                f"{path} is corrupt ({check[0][0]}): restore it from a "
                "backup before migrating"
            )
        found = []
        for layout in layouts.values():
            if layout.table not in tables:
                continue
            present = {
                r[1]
                for r in db.execute(f'PRAGMA table_info("{layout.table}")')
            }
            missing = [
                f for f in layout.required if layout.columns[f] not in present
            ]
            if missing:
                raise LegacyError(
                    f"{path}: table {layout.table} lacks the columns for "
                    f"{missing}; name them in a --mapping file"
                )
            columns = {f: c for f, c in layout.columns.items() if c in present}
            first = db.execute(
                f'SELECT * FROM "{layout.table}" ORDER BY rowid LIMIT 1'
            ).fetchone()
            epoch = legacy_epoch(layout, tables[layout.table], first or ())
            (rows,) = db.execute(
                f'SELECT count(*) FROM "{layout.table}"'
            ).fetchone()
            found.append(_Source(path, layout, columns, epoch, rows))
    finally:
        db.close()
    if not found:
        raise LegacyError(
            f"{path}: unknown layout (tables {sorted(tables)}); expected one "
            f"of {sorted(x.table for x in layouts.values())}, or give a "
            "--mapping file (docs/migration.md)"
        )
    return found


def _migrate_table(
    db: sqlite3.Connection | None,
    source: _Source,
    read: Callable[[int], None],
) -> TableReport:
    layout = source.layout
    report = TableReport(source.path, layout.kind, layout.table)
    converter = ChunkConverter(layout)
    totals = Totals()
    lists = ListLabels(db) if db is not None else None
    for chunk in _converted(source, converter, totals):
        report.read += chunk.read
        report.rejected.update(chunk.reasons.values())
        report.migrated += len(chunk.records)
        if db is not None and lists is not None:
            with atomic(db):
                insert_labels(db, lists, chunk.labels)
                last_event_id = last_event_id_of(db)
                added = insert_events(
                    db,
                    lists,
                    source.epoch,
                    Batch(layout.lane, 0, chunk.records),
                    chunk.seqs.tolist(),
                )
                report.added += added
                if layout.agent_runs:
                    report.runs_added += agent_runs.insert_runs(
                        db,
                        source.epoch,
                        layout.lane,
                        (chunk.records, chunk.seqs),
                        (added, last_event_id),
                    )
        read(chunk.read)
    if db is not None:
        report.checks = compare(db, source.epoch, layout.lane, totals)
        if layout.agent_runs:
            report.checks += agent_runs.compare_runs(
                db, source.epoch, layout.lane, totals
            )
    return report


@dataclasses.dataclass(frozen=True)
class _Chunk:
    read: int
    records: np.ndarray
    seqs: np.ndarray
    reasons: dict[int, str]  # row index -> why it was rejected
    labels: list[tuple[int, str]]  # met for the first time


def _converted(
    source: _Source, converter: ChunkConverter, totals: Totals
) -> Iterator[_Chunk]:
    """The source's chunks, converted and added to ``totals``."""
    for rowids, columns in _read(source):
        records, seqs, reasons = converter.convert(rowids, columns)
        totals.add(records, converter.texts)
        labels = list(converter.labels.items())
        converter.labels.clear()
        yield _Chunk(len(rowids), records, seqs, reasons, labels)


def _read(
    source: _Source,
) -> Iterator[tuple[Sequence[int], dict[str, Sequence[Any]]]]:
    """The source's rows, a chunk at a time, as columns (tuples: copying
    them into lists cost 0.2 s a million rows)."""
    fields = list(source.columns)
    columns = ", ".join(f'"{source.columns[f]}"' for f in fields)
    db = _open_legacy(source.path)
    try:
        cursor = db.execute(
            f'SELECT rowid, {columns} FROM "{source.layout.table}" '
            "ORDER BY rowid"
        )
        while chunk := cursor.fetchmany(CHUNK_ROWS):
            rowids, *values = zip(*chunk, strict=True)
            yield rowids, dict(zip(fields, values, strict=True))
    finally:
        db.close()
