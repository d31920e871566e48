"""--data-only into tables that exist: what it empties, what it leaves, and the foreign keys after.

The tables' triggers and foreign keys exist already, so the rows load with them switched off
(``session_replication_role = replica``, as ``pg_restore --disable-triggers``); everything here
runs against a real PostgreSQL and checks what a user would look at afterwards.
"""

from __future__ import annotations

import psycopg
import pytest

import backupkit
from backupkit.errors import RestoreError
from backupkit.recovery.load import deleting


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _run(dsn: str, script: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


def test_clean_empties_only_the_tables_it_reloads_not_their_inheritance_children(make_db, tmp_path):
    """TRUNCATE without ONLY also emptied a child table made after the snapshot: its rows were lost."""
    dsn = make_db("inherit")
    _run(
        dsn,
        """
        CREATE TABLE events (id int, body text);
        CREATE TABLE events_2024 () INHERITS (events);
        INSERT INTO events VALUES (1, 'old');
        INSERT INTO events_2024 VALUES (2, 'y2024')""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "CREATE TABLE events_2025 () INHERITS (events); INSERT INTO events_2025 VALUES (3, 'y2025')")
    _run(dsn, "UPDATE events SET body = 'changed'")

    backupkit.restore(snap, dsn, data_only=True, clean=True, progress=False)

    assert _rows(dsn, "SELECT id, body FROM events_2025") == [(3, "changed")]  # not the snapshot's: kept
    assert _rows(dsn, "SELECT id, body FROM ONLY events") == [(1, "old")]
    assert _rows(dsn, "SELECT id, body FROM events_2024") == [(2, "y2024")]


@pytest.fixture
def shop(make_db):
    """customers <- orders (ON DELETE CASCADE) <- items; notes -> customers; the app goes on."""
    dsn = make_db("shop")
    _run(
        dsn,
        """
        CREATE TABLE customers (id int PRIMARY KEY, name text);
        CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers ON DELETE CASCADE);
        CREATE TABLE items (id int PRIMARY KEY, "order" int REFERENCES orders ON DELETE CASCADE);
        INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');
        INSERT INTO orders VALUES (10, 1), (20, 2);
        INSERT INTO items VALUES (100, 10), (200, 20)""",
    )
    return dsn


def test_one_table_others_reference_is_reloaded_and_its_references_kept(shop, tmp_path):
    """--table customers --data-only --clean: TRUNCATE refused it (orders references it) with a hint
    nobody could act on.  Its rows are replaced, nothing cascades into orders or items."""
    snap = backupkit.backup(shop, tmp_path, progress=False).path
    _run(shop, "UPDATE customers SET name = 'oops'")

    backupkit.restore(snap, shop, tables=["public.customers"], data_only=True, clean=True, progress=False)

    assert _rows(shop, "SELECT id, name FROM customers ORDER BY id") == [(1, "ann"), (2, "bob")]
    assert _rows(shop, "SELECT count(*) FROM orders") == [(2,)] and _rows(shop, "SELECT count(*) FROM items") == [(2,)]


def test_rows_that_break_a_foreign_key_roll_the_data_only_restore_back(shop, tmp_path):
    """Loaded with foreign-key checks off, the rows were never checked: an order of a customer
    deleted since the snapshot was loaded, and the restore reported success."""
    snap = backupkit.backup(shop, tmp_path, progress=False).path  # orders 10 (ann) and 20 (bob)
    _run(shop, "DELETE FROM customers WHERE id = 2")  # bob, his order and its item go (CASCADE)

    with pytest.raises(RestoreError, match=r"break foreign keys: orders_customer_fkey.*rolled back"):
        backupkit.restore(snap, shop, tables=["public.orders"], data_only=True, clean=True, progress=False)

    assert _rows(shop, "SELECT id FROM orders") == [(10,)]  # as it was
    assert _rows(shop, "SELECT id FROM items") == [(100,)]


def test_which_tables_are_emptied_by_delete():
    # 1 <- 2 <- 3 (outside): 2 is referenced from outside, and 2 references 1.
    assert deleting([1, 2], [(2, 1), (3, 2)]) == {1, 2}
    assert deleting([1, 2], [(2, 1)]) == set()  # both truncated together
    assert deleting([1], [(1, 1)]) == set()  # a table referencing itself
    assert deleting([1, 2], [(3, 1), (2, 2)]) == {1}
