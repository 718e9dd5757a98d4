"""
SQL building blocks the schema's migrations share: running a script
inside the caller's transaction, the texts of label ids (known, unknown
or absent), and the column types of a record dtype.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from livemon.record import RECORD_DTYPE


def typed_columns(
    dtype: np.dtype[np.void] = RECORD_DTYPE,
) -> list[tuple[str, str]]:
    """(field, SQL type) of each field of ``dtype``: REAL for floats,
    INTEGER for the rest (label ids, flags, counts)."""
    return [
        (name, "REAL" if dtype[name].base.kind == "f" else "INTEGER")
        for name in dtype.names or ()
    ]


def run(db: sqlite3.Connection, script: str) -> None:
    """Run the statements of ``script`` in the caller's transaction."""
    # executescript() would COMMIT first; a migration must stay inside its
    # own transaction, so statements run one by one.  A statement ends at
    # a ';' that SQLite agrees ends it (not one inside a literal).
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                db.execute(statement)
            statement = ""


def unknown_text(label: int) -> str:
    """How a label id whose text never reached the database is shown.

    Never NULL or ``[]``, which would read as "no error" or "no agent".
    """
    return f"<unknown #{label & 2**64 - 1:016x}>"


def unknown_text_sql(value: str) -> str:
    """``unknown_text`` in SQL (printf's %x is the id's two's complement)."""
    return f"printf('<unknown #%016x>', {value})"


def label_text(alias: str, column: str) -> str:
    return f"(SELECT text FROM labels WHERE label_id = {alias}.{column})"


def list_text(alias: str, column: str) -> str:
    return f"COALESCE({label_text(alias, column)}, '[]')"


def known_label_text(alias: str, column: str) -> str:
    """A label's text; NULL for no label, ``unknown_text`` if not stored."""
    value = f"{alias}.{column}"
    return (
        f"CASE WHEN {value} = 0 THEN NULL ELSE COALESCE("
        f"{label_text(alias, column)}, {unknown_text_sql(value)}) END"
    )


def known_list_text(alias: str, column: str) -> str:
    """A list's JSON text; ``[]`` for no list, an unknown one named."""
    value = f"{alias}.{column}"
    return (
        f"CASE WHEN {value} = 0 THEN '[]' ELSE COALESCE("
        f"{label_text(alias, column)}, "
        f"json_array({unknown_text_sql(value)})) END"
    )
