"""
Builders for the three legacy databases, one per historical schema, with
realistic rows and hostile ones (each hostile row says why it must fail).
"""

from __future__ import annotations

import json
import random
import sqlite3

ROUTING_SQL = """CREATE TABLE routing_decisions (
    id INTEGER PRIMARY KEY, timestamp DATETIME, query_hash TEXT,
    query_category TEXT, intent_category TEXT, intent_domains TEXT,
    suggested_agents TEXT, routing_strategy TEXT, confidence FLOAT,
    actual_agents TEXT, accepted BOOLEAN, override_reason TEXT)"""
QUALITY_SQL = """CREATE TABLE quality_metrics (
    id INTEGER PRIMARY KEY, timestamp DATETIME, query_hash TEXT,
    query_category TEXT, quality_score FLOAT, task_completed BOOLEAN,
    code_valid BOOLEAN, tests_passed BOOLEAN)"""
PERFORMANCE_SQL = """CREATE TABLE agent_performance (
    id INTEGER PRIMARY KEY, timestamp DATETIME, query_hash TEXT,
    agent_name TEXT, execution_time_ms FLOAT, success BOOLEAN, error TEXT,
    token_count INTEGER, context_size_kb FLOAT)"""

CATEGORIES = ["code", "data", "writing"]
AGENTS = ["coder", "reviewer", "analyst", "writer"]


def _stamp(i: int) -> str:
    return (
        f"2026-10-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00.{i % 1000:03d}"
    )


def routing_db(path, good=200, seed=1):
    """routing_decisions.db: ``good`` rows and 4 hostile ones."""
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute(ROUTING_SQL)
    rows = []
    for i in range(good):
        agents = rng.sample(AGENTS, rng.randint(1, 2))
        rows.append(
            (
                _stamp(i),
                f"{rng.getrandbits(64):016x}",
                rng.choice(CATEGORIES),
                rng.choice(CATEGORIES),
                json.dumps(rng.sample(["python", "sql", "prose"], 2)),
                json.dumps(agents),
                rng.choice(["single", "parallel"]),
                round(rng.random(), 3),
                json.dumps(agents[:1]),
                rng.choice([0, 1, None]),
                rng.choice([None, "user preferred another agent"]),
            )
        )
    rows += [
        (
            "yesterday-ish",
            "ab",
            "code",
            "code",
            "[]",
            '["coder"]',
            "single",
            0.5,
            "[]",
            1,
            None,
        ),  # bad timestamp
        (
            _stamp(1),
            "ab",
            "code",
            "code",
            "[]",
            '["coder"]',
            "single",
            1.7,
            "[]",
            1,
            None,
        ),  # out of range
        (
            _stamp(2),
            "ab",
            "code",
            "code",
            "[]",
            None,
            "single",
            0.5,
            "[]",
            1,
            None,
        ),  # missing agents
        (
            _stamp(3),
            "ab",
            "code",
            "code",
            "[]",
            "not json[",
            "single",
            0.5,
            "[]",
            1,
            None,
        ),  # bad JSON
    ]
    db.executemany(
        f"INSERT INTO routing_decisions VALUES (NULL{', ?' * 11})", rows
    )
    db.commit()
    db.close()
    return good, 4


def quality_db(path, good=150, seed=2):
    """quality_metrics.db: ``good`` rows and 3 hostile ones."""
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute(QUALITY_SQL)
    rows = [
        (
            _stamp(i),
            f"{rng.getrandbits(64):016x}",
            rng.choice([*CATEGORIES, None]),
            round(rng.random(), 4),
            rng.choice([0, 1]),
            rng.choice([0, 1, None]),
            rng.choice([0, 1]),
        )
        for i in range(good)
    ]
    rows += [
        (_stamp(5), "x", "code", None, 1, 1, 1),  # missing quality
        (_stamp(6), "x", "code", -0.2, 1, 1, 1),  # out of range
        (_stamp(7), "x", "code", 0.5, 7, 1, 1),  # flag not 0/1
    ]
    db.executemany(
        f"INSERT INTO quality_metrics VALUES (NULL{', ?' * 7})", rows
    )
    db.commit()
    db.close()
    return good, 3


def _stamp_in_order(i: int) -> str:
    """A row a second from 2026-10-01, as a log appends them."""
    day, second = divmod(i, 86_400)
    hour, second = divmod(second, 3600)
    return (
        f"2026-10-{1 + day % 28:02d} {hour:02d}:{second // 60:02d}:"
        f"{second % 60:02d}.000"
    )


def performance_db(
    path,
    good=300,
    seed=3,
    table="agent_performance",
    sql=PERFORMANCE_SQL,
    in_time_order=False,
):
    """agent_performance.db: ``good`` rows and 3 hostile ones.

    Rows come from 168 hours interleaved (every few rows another hour:
    the rollups' worst case), or ``in_time_order``, a second apart.
    """
    stamp = _stamp_in_order if in_time_order else _stamp
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute(sql)
    rows = [
        (
            stamp(i),
            f"{rng.getrandbits(64):016x}",
            rng.choice(AGENTS),
            round(rng.uniform(10, 9000), 2),
            rng.choice([0, 1]),
            rng.choice([None, "TimeoutError: no answer"]),
            rng.randint(10, 5000),
            round(rng.uniform(1, 90), 1),
        )
        for i in range(good)
    ]
    rows += [
        (1e12, "x", "coder", 10.0, 1, None, 5, 1.0),  # bad timestamp
        (_stamp(8), "x", "coder", -5.0, 1, None, 5, 1.0),  # negative time
        (_stamp(9), "x", None, 5.0, 1, None, 5, 1.0),  # missing agent
    ]
    db.executemany(f"INSERT INTO {table} VALUES (NULL{', ?' * 8})", rows)
    db.commit()
    db.close()
    return good, 3
