"""backupkit meets the pg_dump standard on the whole platform, not just on tables.

tests/test_fidelity_pgdump.py proves that ``pg_dump -Fc`` / ``pg_restore`` of
the whole database reproduces the fidelity fixture (tests/fidelity.sql) with
an equal fingerprint (tests/fingerprint.py), including what lives outside the
schemas: extensions (here in their own schema ``ext``, used by public tables),
publications, large objects, default privileges.  Here backupkit's own round
trip is held to the same standard, run the way pg_restore runs by default: as
a superuser, keeping owners (``owner=True``), every non-system schema backed up.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from fingerprint import SYSTEM_SCHEMAS, diff_fingerprints, fingerprint

import backupkit

FIXTURE_SQL = Path(__file__).with_name("fidelity.sql")


def load_fixture(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FIXTURE_SQL.read_text())


def every_schema(dsn: str) -> list[str]:
    """Every non-system schema, as the fingerprint sees them."""
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                """SELECT nspname FROM pg_namespace
               WHERE nspname <> ALL(%s) AND nspname NOT LIKE 'pg\\_temp\\_%%'
                 AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
               ORDER BY nspname""",
                (list(SYSTEM_SCHEMAS),),
            ).fetchall()
        ]


def assert_same(a: dict, b: dict) -> None:
    diffs = diff_fingerprints(a, b)
    assert not diffs, f"{len(diffs)} difference(s):\n" + "\n".join(diffs[:50])
    assert a == b


@pytest.fixture
def superuser(pg_server):
    # The standard is pg_dump/pg_restore's with owners kept, which needs a superuser: a
    # server without one cannot show it, and must fail rather than pass by skipping.
    with psycopg.connect(pg_server.admin_dsn) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0], (
            "these tests need a superuser: unset BACKUPKIT_TEST_DSN (the embedded server's is one) "
            "or point it at a superuser"
        )


@pytest.mark.parametrize("jobs", [1, 2])
def test_whole_database_round_trip_as_superuser_keeping_owners(superuser, make_db, tmp_path, jobs):
    source = make_db("plat_src")
    load_fixture(source)
    before = fingerprint(source)
    schemas = every_schema(source)
    assert {"public", "ext", "Odd Schema.v1"} <= set(schemas)

    snapshot = backupkit.backup(source, tmp_path, schemas=schemas, jobs=jobs)
    target = make_db("plat_dst")
    backupkit.restore(snapshot.path, target, owner=True, jobs=jobs)

    assert_same(before, fingerprint(target))
    assert_same(before, fingerprint(source))  # the source was only read


def test_public_only_snapshot_brings_the_extension_its_tables_use(make_db, tmp_path):
    """The default snapshot holds schema public only; a public table whose column
    type is ``ext.citext`` must still restore into a new, empty database."""
    source = make_db("ext_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("""
            CREATE SCHEMA ext;
            CREATE EXTENSION citext WITH SCHEMA ext;
            CREATE TABLE public.users (
                id    int PRIMARY KEY,
                email ext.citext NOT NULL UNIQUE,
                tags  ext.citext[]
            );
            INSERT INTO public.users VALUES
             (1, 'Alice@Example.COM', '{Admin,"Power User"}'), (2, 'bob@example.com', NULL);
        """)
    snapshot = backupkit.backup(source, tmp_path)
    target = make_db("ext_dst")
    backupkit.restore(snapshot.path, target)

    assert_same(fingerprint(source, schemas=["public"]), fingerprint(target, schemas=["public"]))
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"
        ).fetchone() == ("ext",)
        # still case-insensitive: the column really is ext.citext, with its unique index
        # (citext's = lives in schema ext, off the default search_path)
        assert conn.execute(
            "SELECT id FROM public.users WHERE email OPERATOR(ext.=) 'ALICE@example.com'"
        ).fetchone() == (1,)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO public.users VALUES (3, 'BOB@EXAMPLE.COM')")
