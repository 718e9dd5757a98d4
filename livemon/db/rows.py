"""
How records become database rows: events, labels, lists of labels and
feedback actions, inserted idempotently on their (epoch, lane, seq).

Shared by the daemon's drain and ``livemon migrate``.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.db import agent_rollup, rollup, schema
from livemon.record import (
    AGENT_RUN_DTYPE,
    ALERT_ACTIONS,
    LIST_FIELDS,
    NO_LABEL,
    RECORD_DTYPE,
    FeedbackAction,
    label_texts,
    list_label_id,
)
from ringbuf import Batch

_EVENT_COLUMNS = (*schema.IDENTITY_COLUMNS, *schema.event_columns())
INSERT_EVENTS = (
    f"INSERT OR IGNORE INTO events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
_FEEDBACK_COLUMNS = (
    "epoch, lane, seq, timestamp_ns, pid, action, subject, old_value, "
    "new_value, statistic, threshold, samples, window_records, message"
)
INSERT_FEEDBACK = {
    table: f"INSERT OR IGNORE INTO {table} ({_FEEDBACK_COLUMNS}) "
    f"VALUES ({', '.join('?' * 14)})"
    for table in ("alerts", "adjustments")
}
INSERT_LABELS = "INSERT OR IGNORE INTO labels (label_id, text) VALUES (?, ?)"
# A list label is rewritten when a name it lacked has arrived since.
REPLACE_LABELS = "INSERT OR REPLACE INTO labels (label_id, text) VALUES (?, ?)"
FILL_IN_LABELS = f"""
    UPDATE labels SET text = replace(
        text, json_quote({schema.unknown_text_sql("?")}), json_quote(?)
    )
    WHERE label_id IN (SELECT list FROM list_members WHERE member = ?)
        AND instr(text, '<unknown #') > 0
"""
"""Put a label's text, just arrived, into the lists stored without it."""


def list_columns(
    records: npt.NDArray[np.void], lists: ListLabels
) -> dict[str, npt.NDArray[np.int64]]:
    """The list label id of each record's lists, per list field."""
    return {name: lists.column(records[name]) for name in LIST_FIELDS}


def event_rows(
    epoch: int,
    batch: Batch,
    list_ids: Mapping[str, npt.NDArray[np.int64]],
    seqs: Iterable[int] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Turn a batch of ``RECORD_DTYPE`` records into ``events`` rows.

    Columns are converted whole by numpy (``tolist``) and zipped, so no
    Python code runs per field of per record.  A column holding one value
    throughout (a lane's pid, the event type, an error or a score never
    given) is that one object repeated: no Python object per row.

    Args:
        list_ids: from ``list_columns``: each list field as list label ids.
        seqs: each record's seq, when not consecutive from ``first_seq``.
    """
    records = batch.records
    columns: list[Iterable[Any]] = [
        itertools.repeat(epoch, len(records)),
        itertools.repeat(batch.lane, len(records)),
        range(batch.first_seq, batch.end_seq) if seqs is None else seqs,
    ]
    for name in RECORD_DTYPE.names or ():
        column = list_ids[name] if name in LIST_FIELDS else records[name]
        columns.append(_values(column))
    return zip(*columns, strict=True)


def _values(column: npt.NDArray[Any]) -> Iterable[Any]:
    """A column's Python values, one object repeated if all are equal.

    Measured here: the comparison costs ~1/20 of the ``tolist`` it saves
    (every float, and every int outside -5..256, is a new object).
    """
    if len(column) > 1:
        # Bit for bit: NaN (unknown) equals itself, -0.0 is not 0.0.
        bits = column.view(f"u{column.dtype.itemsize}")
        if (bits == bits[0]).all():
            return itertools.repeat(column[0].item(), len(column))
    return column.tolist()  # type: ignore[no-any-return]


class ListLabels:
    """Stores each distinct list of label ids once, as a JSON-array label.

    Lists are few (combinations of agents and domains), so the work is per
    distinct list per batch, found with one vectorized ``np.unique``.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._known: dict[bytes, int] = {}
        self._texts: dict[int, str] = {}
        self._missing: set[int] = set()  # not in the database (yet)
        self.new: list[tuple[int, str]] = []
        self.new_members: list[tuple[int, int]] = []

    def learn(self, rows: Iterable[tuple[int, str]]) -> None:
        """Remember label texts written in this batch."""
        for label, text in rows:
            self._texts[label] = text
            self._missing.discard(label)

    def column(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The list label id of each row of ``ids`` (int64[n, k])."""
        if not len(ids):
            return np.empty(0, np.int64)
        distinct, inverse = _distinct_rows(ids)
        labels = np.empty(len(distinct), np.int64)
        for j, row in enumerate(distinct):
            key = row.tobytes()
            label = self._known.get(key)
            if label is None:
                label = self._add(row.tolist(), key)
            labels[j] = label
        return labels[inverse.reshape(-1)]

    def _add(self, ids: list[int], key: bytes) -> int:
        label = list_label_id(ids)
        if label == NO_LABEL:
            self._known[key] = label
            return label
        members = [i for i in ids if i]
        texts = [self._text(i) for i in members]
        # A member whose text has not arrived is named, never left out:
        # FILL_IN_LABELS puts the text in when it comes.
        names = [
            schema.unknown_text(i) if t is None else t
            for i, t in zip(members, texts, strict=True)
        ]
        self.new_members += [(label, m) for m in dict.fromkeys(members)]
        self.new.append(
            (
                label,
                json.dumps(names, ensure_ascii=False, separators=(",", ":")),
            )
        )
        if None not in texts:
            self._known[key] = label  # complete: never written again
        return label

    def _text(self, label: int) -> str | None:
        text = self._texts.get(label)
        if text is None and label not in self._missing:
            row = self._db.execute(
                "SELECT text FROM labels WHERE label_id = ?", (label,)
            ).fetchone()
            if row is None:
                self._missing.add(label)
            else:
                text = self._texts[label] = row[0]
        return text


_ACTION_NAMES = {int(a): a.name.lower() for a in FeedbackAction}
_ALERT_CODES = frozenset(int(a) for a in ALERT_ACTIONS)
# A code from a newer coordinator (a rolling upgrade) or a damaged record
# is stored as "action_<code>": one odd row, never a daemon that stops.


def feedback_rows(
    epoch: int, batch: Batch
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Split a FEEDBACK_DTYPE batch into ``alerts`` and ``adjustments``."""
    records = batch.records
    seqs = range(batch.first_seq, batch.end_seq)
    rows: dict[str, list[tuple[Any, ...]]] = {"alerts": [], "adjustments": []}
    for seq, r in zip(seqs, records.tolist(), strict=True):
        table = "alerts" if r[2] in _ALERT_CODES else "adjustments"
        name = _ACTION_NAMES.get(r[2]) or f"action_{r[2]}"
        rows[table].append((epoch, batch.lane, seq, r[0], r[1], name, *r[3:]))
    return list(rows.items())


def _distinct_rows(
    ids: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """Distinct rows of ``ids`` and, per row, the index of its distinct row.

    ``np.unique(axis=0)`` sorts rows as structured values (~50 ms for 20k
    rows here); hashing each row to one u64 and sorting those is ~20x
    faster.  A hash collision is caught by the check and falls back.
    """
    with np.errstate(over="ignore"):
        keys = np.zeros(len(ids), np.uint64)
        for column in ids.T.view(np.uint64):
            keys = (keys ^ column) * np.uint64(0x9E3779B97F4A7C15)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    distinct = ids[first]
    if not np.array_equal(distinct[inverse], ids):
        distinct, inverse = np.unique(ids, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)


def insert_records(
    db: sqlite3.Connection,
    lists: ListLabels,
    epoch: int,
    labels: list[Batch],
    events: list[Batch],
    feedback: tuple[int, list[Batch]] = (0, []),
) -> int:
    """Insert labels, events and feedback; the caller owns the transaction.

    Records already stored (same epoch, lane, seq) are ignored, so a
    batch replayed after a crash adds nothing.  Returns events inserted.
    """
    for batch in labels:
        insert_labels(db, lists, label_texts(batch.records))
    last_id = schema.last_event_id(db)
    inserted = sum(
        insert_events(db, lists, epoch, batch, roll_up=False)
        for batch in events
    )
    if events:  # one rollup pass for all lanes: it costs per call too
        records = (
            events[0].records
            if len(events) == 1  # the usual step: no copy
            else np.concatenate([batch.records for batch in events])
        )
        rollup.add_inserted(db, records, inserted, last_id)
    feedback_epoch, feedback_batches = feedback
    for batch in feedback_batches:
        for table, rows in feedback_rows(feedback_epoch, batch):
            db.executemany(INSERT_FEEDBACK[table], rows)
    return inserted


def insert_labels(
    db: sqlite3.Connection, lists: ListLabels, rows: list[tuple[int, str]]
) -> None:
    """Insert label texts (ignoring known ids) and remember them."""
    db.executemany(INSERT_LABELS, rows)
    db.executemany(FILL_IN_LABELS, [(i, text, i) for i, text in rows])
    lists.learn(rows)


def insert_events(
    db: sqlite3.Connection,
    lists: ListLabels,
    epoch: int,
    batch: Batch,
    seqs: Iterable[int] | None = None,
    roll_up: bool = True,
) -> int:
    """Insert a batch of events (and new list labels); return rows added.

    Args:
        roll_up: keep the rollups in step (off only for a caller that
            rolls up several batches at once, with ``rollup.add_inserted``).
    """
    last_id = schema.last_event_id(db) if roll_up else 0
    list_ids = list_columns(batch.records, lists)
    before = db.total_changes
    db.executemany(INSERT_EVENTS, event_rows(epoch, batch, list_ids, seqs))
    added = db.total_changes - before
    db.executemany(REPLACE_LABELS, lists.new)
    db.executemany(rollup.INSERT_MEMBERS, lists.new_members)
    lists.new.clear()
    lists.new_members.clear()
    if roll_up:
        rollup.add_inserted(db, batch.records, added, last_id)
    return added


# -- agent runs (issue 15) -----------------------------------------------

_AGENT_RUN_COLUMNS = (*schema.IDENTITY_COLUMNS, *schema.agent_run_columns())
INSERT_AGENT_RUNS = (
    f"INSERT OR IGNORE INTO agent_runs ({', '.join(_AGENT_RUN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_AGENT_RUN_COLUMNS))})"
)


def agent_run_rows(epoch: int, batch: Batch) -> Iterator[tuple[Any, ...]]:
    """Turn a batch of ``AGENT_RUN_DTYPE`` records into ``agent_runs`` rows
    (columns converted whole by numpy, as ``event_rows``)."""
    records = batch.records
    columns: list[Iterable[Any]] = [
        itertools.repeat(epoch, len(records)),
        itertools.repeat(batch.lane, len(records)),
        range(batch.first_seq, batch.end_seq),
    ]
    columns += [records[name].tolist() for name in AGENT_RUN_DTYPE.names or ()]
    return zip(*columns, strict=True)


def last_agent_run_id(db: sqlite3.Connection) -> int:
    """The highest ``agent_runs.id`` (0 when empty): rows above it are new."""
    row = db.execute("SELECT coalesce(max(id), 0) FROM agent_runs").fetchone()
    return int(row[0])


def insert_agent_runs(
    db: sqlite3.Connection, epoch: int, batches: list[Batch]
) -> int:
    """Insert agent runs and fold them into their rollups; return rows
    added.  The caller owns the transaction; runs already stored (same
    epoch, lane, seq) are ignored, so a replayed batch adds nothing.

    Args:
        epoch: the agents ring's epoch (part of each run's identity).
    """
    last_id = last_agent_run_id(db)
    before = db.total_changes
    for batch in batches:
        db.executemany(INSERT_AGENT_RUNS, agent_run_rows(epoch, batch))
    added = db.total_changes - before
    if added:
        agent_rollup.add_agent_runs_after(db, last_id)
    return added
