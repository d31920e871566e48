"""Late review of the planning check for names a created table needs (``recovery/obstacles.py``).

A whole-snapshot restore with ``--clean`` into the live database after a migration renamed
``messages`` to ``posts`` (which keeps ``messages_pkey`` and ``messages_id_seq``): the dry run
passed and the real run failed on 'already exists', as a ``--table`` restore did before the
check; the check ran for named tables and schemas only.

Real components: embedded PostgreSQL, the ``backupkit`` command.
"""

from __future__ import annotations

import psycopg
from helpers import run_cli, snapshot_dirs


def test_a_whole_snapshot_clean_restore_names_the_renamed_table_in_the_dry_run(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.messages (id serial primary key, body text)")
        conn.execute("insert into public.messages (body) values ('a'), ('b')")
        conn.execute("create table public.notes (id int primary key)")
    assert run_cli("backup", "--dsn", dsn, "--to", str(tmp_path / "b"), "--quiet").returncode == 0
    snap = str(snapshot_dirs(tmp_path / "b")[0])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table public.messages rename to posts")

    dry = run_cli("restore", snap, "--dsn", dsn, "--clean", "--dry-run")
    assert dry.returncode == 9, "the dry run passed:\n" + dry.stdout + dry.stderr
    assert "public.posts" in dry.stderr
    done = run_cli("restore", snap, "--dsn", dsn, "--clean")
    assert done.returncode == 9 and "public.posts" in done.stderr, done.stderr
    with psycopg.connect(dsn) as conn:  # nothing changed
        assert conn.execute("select count(*) from public.posts").fetchone() == (2,)
