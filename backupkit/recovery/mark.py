"""A mark in the target database while a parallel restore is not finished.

A parallel restore commits its pre-data first and loads tables in parallel
transactions; a connection lost, a SIGTERM or a kill -9 before its last
transaction leaves tables behind that look like a database.  So the first
transaction also writes a row into ``_backupkit.restore_in_progress`` and only
the last one (or the undo after a failure) removes it: whatever stops the
restore, the target is unchanged, fully restored, or visibly marked.  Every
later restore reads the mark and refuses to go on without ``--clean``, which
replaces the half-restored tables and removes the mark in its own transaction.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from ..pg.rows import one_row

SCHEMA = "_backupkit"
TABLE = "restore_in_progress"
_QUALIFIED = sql.Identifier(SCHEMA, TABLE)


def set_sql(snapshot: str, tables: list[str]) -> sql.Composed:
    """Statements that create the mark (run in the restore's first, committed transaction)."""
    return sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {s};\n"
        "CREATE TABLE IF NOT EXISTS {t} (snapshot text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
        "restored_by text NOT NULL DEFAULT current_user, tables jsonb NOT NULL);\n"
        "COMMENT ON TABLE {t} IS {c};\n"
        "INSERT INTO {t} (snapshot, tables) VALUES ({snap}, {tables});\n"
    ).format(
        s=sql.Identifier(SCHEMA),
        t=_QUALIFIED,
        snap=sql.Literal(snapshot),
        tables=sql.Literal(json.dumps(tables)),
        c=sql.Literal(
            "backupkit: a restore into this database has not finished; "
            "restore again with `clean`, or see docs/recovery.md"
        ),
    )


def clear_sql() -> str:
    """Statements that remove the mark (with the restore's last transaction, or its undo)."""
    return f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;\n"


def read(conn: psycopg.Connection) -> list[dict]:
    """The unfinished restores marked in this database, oldest first ([] when none)."""
    if one_row(conn.execute("SELECT to_regclass(%s)", (_QUALIFIED.as_string(conn),)))[0] is None:
        return []
    cur = conn.execute(
        sql.SQL("SELECT snapshot, started_at, restored_by, tables FROM {} ORDER BY started_at").format(_QUALIFIED)
    )
    return [
        {"snapshot": s, "started_at": t.isoformat(), "restored_by": by, "tables": tables}
        for s, t, by, tables in cur.fetchall()
    ]


def describe(marks: list[dict]) -> str:
    """One line for a person: which restore did not finish, when, and what it left."""
    m = marks[-1]
    tables = m["tables"]
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    return (
        f"a restore of snapshot {m['snapshot']} by {m['restored_by']} started {m['started_at']} did not "
        f"finish: tables {shown} may be half-loaded"
    )
