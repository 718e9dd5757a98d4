"""
Reading back what a Monitor wrote (events and label texts from the rings),
synthetic request records for tests and benchmarks, and a database holding
them.
"""

from __future__ import annotations

import contextlib
import sqlite3

import numpy as np
import numpy.typing as npt

import ringbuf
from livemon.db import schema
from livemon.db.rows import ListLabels, insert_events, insert_labels
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_id


def labels_in(ring_name: str) -> dict[int, str]:
    """Every label text published in the labels ring, by id."""
    texts = {}
    with ringbuf.Ring.attach(ring_name + ".labels", LABEL_DTYPE) as ring:
        for lane in range(ring.lanes):
            for record in ring.pending(lane).records:
                raw = record["text"][: record["length"]].tobytes()
                texts[int(record["label_id"])] = raw.decode()
    return texts


def events_in(ring_name: str) -> npt.NDArray[np.void]:
    """Every event record pending in the events ring, lane by lane."""
    with ringbuf.Ring.attach(ring_name, RECORD_DTYPE) as ring:
        parts = [ring.pending(lane).records for lane in range(ring.lanes)]
    return np.concatenate(parts)


def names(ids: npt.NDArray[np.int64], labels: dict[int, str]) -> list[str]:
    """The texts of a padded list of label ids."""
    return [labels[int(i)] for i in ids if i]


AGENTS = ["coder", "reviewer", "planner", "searcher", "writer", "tester"]
CATEGORIES = ["code", "docs", "search", "planning", "review"]
ERRORS = ["timeout after 30s", "agent crashed", "rate limited"]
OVERRIDES = ["user chose another agent", "policy: sensitive data"]


def synthetic_records(
    count: int, seed: int, start_ns: int, step_ns: int
) -> tuple[npt.NDArray[np.void], dict[int, str]]:
    """Varied request records, ``step_ns`` apart, and their label texts.

    Some fields are unknown (NaN, -1) as in real traffic; agent lists
    have one to three agents.
    """
    rng = np.random.default_rng(seed)
    texts = AGENTS + CATEGORIES + ERRORS + OVERRIDES
    ids = {text: label_id(text) for text in texts}
    agents = np.array([ids[a] for a in AGENTS])
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = start_ns + np.arange(count) * step_ns
    records["request_id"] = rng.integers(1, 2**62, count)
    records["query_hash"] = rng.integers(-(2**62), 2**62, count)
    records["event_type"] = rng.choice([0, 0, 0, 1, 2, 3], count)
    categories = np.array([ids[c] for c in CATEGORIES])
    records["intent_category"] = rng.choice(categories, count)
    records["query_category"] = records["intent_category"]
    records["confidence"] = rng.random(count)
    for slot in range(3):
        used = rng.random(count) < (1.0, 0.3, 0.1)[slot]
        records["actual_agents"][:, slot] = np.where(
            used, rng.choice(agents, count), 0
        )
    records["actual_agents"][:, 1:3] *= records["actual_agents"][:, :1] != 0
    records["suggested_agents"][:, 0] = rng.choice(agents, count)
    records["accepted"] = rng.choice([-1, 0, 1, 1, 1, 1], count)
    reasons = np.array([ids[o] for o in OVERRIDES])
    overridden = records["accepted"] == 0
    records["override_reason"] = np.where(
        overridden, rng.choice(reasons, count), 0
    )
    records["success"] = rng.choice([-1, 0, 1, 1, 1, 1, 1, 1], count)
    errors = np.array([ids[e] for e in ERRORS])
    records["error"] = np.where(
        records["success"] == 0, rng.choice(errors, count), 0
    )
    latency = rng.lognormal(6.5, 0.8, count)
    latency[rng.random(count) < 0.1] = np.nan
    records["execution_time_ms"] = latency
    quality = rng.beta(8, 2, count)
    quality[rng.random(count) < 0.2] = np.nan
    records["quality_score"] = quality
    records["token_count"] = rng.choice([-1, 500, 1200, 4000], count)
    records["context_size_kb"] = np.nan
    records["overhead_ns"] = rng.integers(3000, 20000, count)
    records["query_complexity"] = -1
    records["task_completed"] = records["code_valid"] = -1
    records["tests_passed"] = -1
    return records, {ids[t]: t for t in texts}


def write_database(
    path: str,
    records: npt.NDArray[np.void],
    labels: dict[int, str],
    part: int = 4000,
) -> None:
    """A unified database (WAL) at ``path`` holding ``records`` and their
    label texts, inserted as the daemon does, ``part`` records a batch."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        schema.apply_migrations(db)
        lists = ListLabels(db)
        db.execute("BEGIN")
        insert_labels(db, lists, list(labels.items()))
        for first in range(0, len(records), part):
            batch = ringbuf.Batch(0, first, records[first : first + part])
            insert_events(db, lists, 1, batch)
        db.execute("COMMIT")
