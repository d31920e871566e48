"""Partial restores of partitioned tables: sub-partitions, foreign keys to a partitioned table,
whole schemas and `clean` in place.  Each dry run must agree with the real run, and what is
restored must equal the source: rows, keys and attachments."""

from __future__ import annotations

import psycopg
import pytest
from helpers import run_cli

import backupkit

SOURCE = """
CREATE TABLE sp (id serial, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE sp_a PARTITION OF sp FOR VALUES FROM (0) TO (100);
CREATE TABLE sp_b PARTITION OF sp FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (k);
CREATE TABLE sp_b1 PARTITION OF sp_b FOR VALUES FROM (100) TO (150);
CREATE INDEX sp_k_idx ON sp (k);
CREATE TABLE ref (id int PRIMARY KEY, sid int, sk int, FOREIGN KEY (sid, sk) REFERENCES sp (id, k));
INSERT INTO sp (k) SELECT i % 150 FROM generate_series(1, 300) i;
INSERT INTO ref SELECT id, id, k FROM sp WHERE id % 7 = 0;
"""

#: Each table's parent (pg_inherits), primary key and valid indexes, foreign keys by name.
_SHAPE = """
SELECT c.relname,
       (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE i.inhrelid = c.oid),
       (SELECT array_agg(x.relname || ':' || ix.indisvalid ORDER BY x.relname)
          FROM pg_index ix JOIN pg_class x ON x.oid = ix.indexrelid WHERE ix.indrelid = c.oid),
       (SELECT array_agg(conname || '->' || confrelid::regclass::text ORDER BY conname)
          FROM pg_constraint WHERE conrelid = c.oid AND contype = 'f' AND conparentid = 0)
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
   AND c.relname = ANY(%s) ORDER BY 1
"""


def _shape(dsn: str, names: list[str]) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(_SHAPE, (names,)).fetchall()


def _rows(dsn: str, table: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


@pytest.fixture
def source(make_db, tmp_path):
    dsn = make_db("parts_src")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SOURCE)
    return dsn, backupkit.backup(dsn, tmp_path / "bk", progress=False).path


def _restore(snapshot, dsn, *options) -> tuple[psycopg.Connection | None, object]:
    """The dry run, then the real run, of `backupkit restore` as a user runs it."""
    dry = run_cli("restore", snapshot, "--dsn", dsn, *options, "--dry-run", "-q")
    real = run_cli("restore", snapshot, "--dsn", dsn, *options, "-q")
    return dry, real


def test_a_sub_partition_restores_with_every_partitioned_table_above_it(source, make_db):
    """`--table public.sp_b1`, a partition of sp_b, itself a partition of sp: the dry run passed,
    the real run failed on 'relation public.sp does not exist' (only the immediate parent was made)."""
    src, snapshot = source
    target = make_db("parts_b1")

    dry, real = _restore(snapshot, target, "--table", "public.sp_b1")

    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    assert _rows(target, "sp_b1") == _rows(src, "sp_b1")
    assert _rows(target, "sp") == _rows(src, "sp_b1")  # the rows the restore brought, through sp
    names = ["sp", "sp_b", "sp_b1"]
    assert _shape(target, names) == _shape(src, names)  # attachments, keys (valid), indexes


def test_naming_a_partitioned_table_takes_its_partitions_every_level_down(source, make_db):
    """`--table public.sp` took its immediate partitions only: sp_b1's rows were left out."""
    src, snapshot = source
    target = make_db("parts_sp")

    dry, real = _restore(snapshot, target, "--table", "public.sp")

    assert dry.returncode == 0 and real.returncode == 0, dry.stderr + real.stderr
    assert _rows(target, "sp") == _rows(src, "sp")
    names = ["sp", "sp_a", "sp_b", "sp_b1"]
    assert _shape(target, names) == _shape(src, names)


def test_with_dependencies_brings_a_referenced_partitioned_table_whole(source, make_db):
    """`--table public.ref --with-dependencies`, ref's foreign key pointing at the partitioned sp:
    the dry run passed, the real run failed on 'there is no unique constraint matching given keys
    for referenced table sp' (sp_b's key was not made, so sp's stayed invalid).  Without
    `--with-dependencies` the dry run names what is missing."""
    src, snapshot = source

    alone = run_cli("restore", snapshot, "--dsn", make_db("parts_ref_alone"), "--table", "public.ref", "--dry-run")
    assert alone.returncode != 0
    assert "public.ref references public.sp" in alone.stderr

    target = make_db("parts_ref")
    dry, real = _restore(snapshot, target, "--table", "public.ref", "--with-dependencies")

    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    for table in ("ref", "sp", "sp_a", "sp_b1"):
        assert _rows(target, table) == _rows(src, table)
    names = ["ref", "sp", "sp_a", "sp_b", "sp_b1"]
    assert _shape(target, names) == _shape(src, names)


def test_clean_restores_over_a_sub_partitioned_database(source):
    """`--clean` over the source with sub-partitions: the whole snapshot, and `--schema public`
    after a migration added a column (every table dropped and made again), passed their dry runs
    and failed on 'cannot drop inherited constraint "sp_b_pkey"': sp_b, a partitioned table that
    is a partition too, had its key dropped before sp's.  `--table public.sp_b1` replaces its
    rows in place, keeping the tables above it and sp_a's newer rows."""
    src, snapshot = source
    names = ["ref", "sp", "sp_a", "sp_b", "sp_b1"]
    shape, rows = _shape(src, names), {t: _rows(src, t) for t in names}

    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("DELETE FROM ref; DELETE FROM sp_b1 WHERE id % 2 = 0; INSERT INTO sp (k) VALUES (5), (120)")
    dry, real = _restore(snapshot, src, "--clean")
    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    assert _shape(src, names) == shape and {t: _rows(src, t) for t in names} == rows

    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("DELETE FROM ref; ALTER TABLE sp ADD COLUMN x int")
    dry, real = _restore(snapshot, src, "--schema", "public", "--clean")
    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    assert _shape(src, names) == shape and {t: _rows(src, t) for t in names} == rows

    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("DELETE FROM ref; DELETE FROM sp_b1 WHERE id % 2 = 0; INSERT INTO sp (k) VALUES (5), (120)")
        sp_a = conn.execute("SELECT * FROM sp_a ORDER BY 1, 2").fetchall()
    dry, real = _restore(snapshot, src, "--table", "public.sp_b1", "--clean")
    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    assert _rows(src, "sp_b1") == rows["sp_b1"] and _rows(src, "sp_a") == sp_a
    assert _shape(src, names) == shape


def test_a_schema_of_partitions_restores_with_their_partitioned_tables_elsewhere(make_db, tmp_path):
    """`--schema parts`, whose partitions belong to partitioned tables in public (two levels)."""
    src = make_db("parts_schema_src")
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA parts;"
            + SOURCE.replace("CREATE TABLE sp_b1 PARTITION", "CREATE TABLE parts.sp_b1 PARTITION").replace(
                "CREATE TABLE sp_a PARTITION", "CREATE TABLE parts.sp_a PARTITION"
            )
        )
    snapshot = backupkit.backup(src, tmp_path / "bk", schemas=["public", "parts"], progress=False).path
    target = make_db("parts_schema")

    dry, real = _restore(snapshot, target, "--schema", "parts")

    assert dry.returncode == 0, dry.stderr
    assert real.returncode == 0, real.stderr
    assert _rows(target, "sp") == _rows(src, "sp")
    with psycopg.connect(target) as conn:
        parents = conn.execute(
            "SELECT c.oid::regclass::text, i.inhparent::regclass::text FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid ORDER BY 1"
        ).fetchall()
    assert ("parts.sp_b1", "sp_b") in parents and ("sp_b", "sp") in parents and ("parts.sp_a", "sp") in parents
