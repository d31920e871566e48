"""Restores whose dry run passed and whose real run then failed on something the plan could see:
a sequence the target lacks, privileges the restoring role lacks on the tables and sequences
it loads into and sets.  Real PostgreSQL, non-superuser roles made by each test."""

from __future__ import annotations

import contextlib

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit.errors import RestoreError


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _run(dsn: str, script: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


@contextlib.contextmanager
def _role(dsn: str, prefix: str):
    """A login role (NOSUPERUSER) allowed to set session_replication_role, as Supabase's postgres
    is; its DSN to ``dsn``'s database.  Dropped afterwards (roles belong to the whole server)."""
    role = f"{prefix}_{conninfo_to_dict(dsn)['dbname']}"
    _run(dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{prefix}'")
    _run(dsn, f"GRANT SET ON PARAMETER session_replication_role TO {role}")
    try:
        yield role, make_conninfo(dsn, user=role, password=f"pw-{prefix}")
    finally:
        _run(dsn, f"REVOKE SET ON PARAMETER session_replication_role FROM {role}")
        _run(dsn, f"DROP OWNED BY {role}; DROP ROLE {role}")


INVOICES = """
CREATE SEQUENCE invoice_no START 1000;
CREATE SEQUENCE ticket START 50;
CREATE TABLE invoices (id int PRIMARY KEY, no bigint DEFAULT nextval('invoice_no'), t int DEFAULT nextval('ticket'));
INSERT INTO invoices (id) SELECT i FROM generate_series(1, 5) i"""


def test_data_only_of_the_whole_snapshot_leaves_out_a_sequence_the_target_lacks(make_db, tmp_path):
    """The target's schema (made by the app's migrations) has no invoice_no: the dry run passed,
    the real run loaded every row and then failed on 'relation public.invoice_no does not
    exist', rolling it all back.  Nothing in the target draws from it, so it is left out and
    named with its value; the sequence the target has is set."""
    source = make_db("seq")
    _run(source, INVOICES)
    snap = backupkit.backup(source, tmp_path, progress=False).path
    target = make_db("seqdst")
    _run(target, "CREATE SEQUENCE ticket; CREATE TABLE invoices (id int PRIMARY KEY, no bigint, t int)")
    with _role(target, "loader") as (loader, as_loader):
        _run(target, f"ALTER TABLE invoices OWNER TO {loader}; ALTER SEQUENCE ticket OWNER TO {loader}")

        planned = backupkit.restore(snap, as_loader, data_only=True, dry_run=True, progress=False)
        result = backupkit.restore(snap, as_loader, data_only=True, progress=False)

        assert result.rows == 5 and _rows(target, "SELECT count(*) FROM invoices") == [(5,)]
        assert _rows(target, "SELECT nextval('ticket')") == [(55,)]
        for notes in (planned.plan.notes, result.plan.notes):
            assert any("did not set sequence public.invoice_no (the snapshot's value 1004)" in n for n in notes)


SHOP = """
CREATE TABLE customers (id int PRIMARY KEY, name text);
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers);
CREATE SEQUENCE ticket START 50;
CREATE TABLE notes (id int PRIMARY KEY, ticket int DEFAULT nextval('ticket'), customer int REFERENCES customers);
INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');
INSERT INTO orders (customer) VALUES (1), (2), (2);
INSERT INTO notes (id, customer) VALUES (1, 1)"""


@pytest.mark.parametrize("how", ["data-only", "in-place"])
def test_privileges_the_restore_uses_are_named_by_the_dry_run_with_the_grant(make_db, tmp_path, how):
    """A role that may switch triggers off, restoring tables it does not own: the dry run passed
    (or, data_only without SELECT, stopped on 'cannot read what the target database has:
    permission denied for table notes'), the real run failed on INSERT, TRUNCATE or DELETE, the
    foreign-key check's SELECT, then setval of orders_id_seq, each time rolled back.  The dry run
    names each table, privilege and the GRANT; run as given, the restore succeeds."""
    db = make_db("priv")
    _run(db, SHOP)
    snap = backupkit.backup(db, tmp_path, progress=False).path
    _run(db, "UPDATE customers SET name = 'changed'; DELETE FROM orders WHERE id = 3; SELECT setval('ticket', 60)")
    kw = {"data_only": True} if how == "data-only" else {}
    tables = ["public.orders", "public.notes"] if how == "data-only" else ["public.orders"]
    with _role(db, "loader") as (loader, as_loader):
        with pytest.raises(RestoreError) as caught:
            backupkit.restore(snap, as_loader, tables=tables, clean=True, dry_run=True, progress=False, **kw)
        said = str(caught.value)
        assert "nothing was changed" in said
        if how == "data-only":
            assert (
                "INSERT, TRUNCATE, SELECT on public.orders (to load its rows, to empty it, "
                "to check foreign key orders_customer_fkey)"
            ) in said
            assert "UPDATE, USAGE on sequence public.ticket (to set its value, to read its value)" in said
        else:
            assert (
                "INSERT, DELETE, SELECT on public.orders (to load its rows, to empty it, "
                "to check foreign key orders_customer_fkey)"
            ) in said
        assert "; SELECT on public.customers (to check foreign key orders_customer_fkey" in said
        assert "UPDATE on sequence public.orders_id_seq (to set its value)" in said
        with pytest.raises(RestoreError, match="nothing was changed"):
            backupkit.restore(snap, as_loader, tables=tables, clean=True, progress=False, **kw)
        assert _rows(db, "SELECT count(*) FROM orders") == [(2,)]

        _run(db, said.split("run `", 1)[1].split("`", 1)[0])  # the GRANTs, as the owner
        backupkit.restore(snap, as_loader, tables=tables, clean=True, dry_run=True, progress=False, **kw)
        result = backupkit.restore(snap, as_loader, tables=tables, clean=True, progress=False, **kw)
        assert result.rows == (4 if how == "data-only" else 3)
        assert _rows(db, "SELECT id, customer FROM orders ORDER BY id") == [(1, 1), (2, 2), (3, 2)]
        assert _rows(db, "SELECT nextval('orders_id_seq')") == [(4,)]
        assert _rows(db, "SELECT name FROM customers ORDER BY id") == [("changed",), ("changed",)]  # not restored


def test_a_foreign_key_to_a_table_the_role_may_not_reference_is_named_by_the_dry_run(make_db, tmp_path):
    """--table public.orders into a database whose customers belong to another role: the dry run
    passed, the real run failed on creating orders_customer_fkey (REFERENCES) and rolled back."""
    db = make_db("refs")
    _run(db, SHOP)
    snap = backupkit.backup(db, tmp_path, progress=False).path
    _run(db, "DROP TABLE orders")
    with _role(db, "maker") as (maker, as_maker):
        _run(db, f"GRANT CREATE ON SCHEMA public TO {maker}; GRANT SELECT ON customers TO {maker}")
        with pytest.raises(RestoreError) as caught:
            backupkit.restore(snap, as_maker, tables=["public.orders"], dry_run=True, progress=False)
        said = str(caught.value)
        assert "REFERENCES on public.customers (for foreign key orders_customer_fkey)" in said
        _run(db, said.split("run `", 1)[1].split("`", 1)[0])
        result = backupkit.restore(snap, as_maker, tables=["public.orders"], progress=False)
        assert result.rows == 3
        assert _rows(db, "SELECT count(*) FROM orders") == [(3,)]
        _run(db, f"REVOKE CREATE ON SCHEMA public FROM {maker}")


@pytest.mark.parametrize(
    "policy",
    [
        "create policy own_files on storage.objects for select using "
        "(owner_id::uuid in (select id from public.profiles))",
        "create policy named on public.messages for select to authenticated using "
        "(profile_id in (select id from public.profiles where username is not null))",
    ],
    ids=["storage-policy", "in-place-table-policy"],
)
def test_schema_clean_names_a_policy_that_reads_a_table_it_would_remake(supabase_project, tmp_path, policy):
    """Supabase, as postgres: public.profiles got a column since the snapshot, so `--schema public
    --clean` drops and makes it again; a storage.objects policy reading public.profiles (or one
    on public.messages, which stays in place) is kept.  The dry run passed, the real run failed
    on 'cannot drop table profiles because other objects depend on it' without naming them."""
    project = supabase_project.app_project()
    with psycopg.connect(supabase_project.admin(project), autocommit=True) as conn:
        conn.execute(policy)  # supautils' policy_grants lets postgres do it on the platform
    snap = backupkit.backup(project, tmp_path / "b", schemas=["public"], progress=False).path
    _run(project, "ALTER TABLE public.profiles ADD COLUMN extra int; UPDATE public.profiles SET extra = 1")
    name, table = policy.split()[2], policy.split()[4]

    with pytest.raises(RestoreError) as caught:
        backupkit.restore(snap, project, schemas=["public"], clean=True, dry_run=True, progress=False)
    assert "`clean` would drop and make again public.profiles" in str(caught.value)
    assert f"policy {name} on {table} depend on it" in str(caught.value)
    with pytest.raises(RestoreError, match="nothing was changed"):
        backupkit.restore(snap, project, schemas=["public"], clean=True, progress=False)
    assert _rows(project, "SELECT count(*) FROM public.profiles WHERE extra = 1") == [(3,)]
