"""The one row of a query that always returns one: ``SELECT count(*)``, a function call, ``EXISTS``.

psycopg's ``fetchone()`` is typed to allow for no row; ``one_row`` says the query
cannot return none, and fails loudly if it did, instead of a ``TypeError`` on ``None``.
"""

from __future__ import annotations

from typing import TypeVar

import psycopg

R = TypeVar("R")


def one_row(cursor: psycopg.Cursor[R]) -> R:
    """The next row of ``cursor``, which must have one (``conn.execute(...)`` returns the cursor)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a query that returns one row returned none")
    return row
