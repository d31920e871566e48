"""Review of the session's changes: places that used to work and were refused after them.

Each test runs the real command against a real PostgreSQL, and checks what a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from helpers import run_cli

import backupkit


def _small(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")


def test_a_backup_directory_under_a_folder_with_another_manifest_json_is_not_a_snapshot(make_db, tmp_path):
    """A web app's (or a Chrome extension's, or `docker save`'s) manifest.json in a folder above
    the backup directory made `backup --to`, `list` and `verify` say "is inside snapshot .,
    not a backup directory" (exit 2): every command refused a folder that worked before."""
    dsn = make_db("place_manifest")
    _small(dsn)
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({"name": "My PWA", "start_url": "/", "display": "standalone"}))
    repo = app / "backups"

    out = run_cli("backup", "--dsn", dsn, "--to", repo)
    assert out.returncode == 0, out.stderr
    snap = Path(out.stdout.strip().splitlines()[-1])
    assert snap.parent == repo
    assert run_cli("list", repo).returncode == 0
    assert run_cli("verify", snap).returncode == 0
    assert backupkit.verify(snap).ok

    # A real snapshot above still counts: a backup directory inside one is refused.
    out = run_cli("backup", "--dsn", dsn, "--to", snap / "inner")
    assert out.returncode == 2 and "is inside snapshot" in out.stderr


def test_a_clean_restore_that_remakes_a_table_in_a_schema_with_a_dot_in_its_name(make_db, tmp_path):
    """`restore --schema my.app --clean` after a column was renamed remade the table before;
    the new check for dependents split the key "my.app.t" at its first dot and failed with
    'cannot read what the target database has: relation "my.app.t" does not exist' (exit 9).
    Fails until backupkit/recovery/obstacles.py's _DEPENDENTS matches tables by key (see the review)."""
    dsn = make_db("dotted_schema")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            'CREATE SCHEMA "my.app"; CREATE TABLE "my.app".t (id int PRIMARY KEY, v text); '
            "INSERT INTO \"my.app\".t VALUES (1, 'a')"
        )
    snap = backupkit.backup(dsn, tmp_path, schemas=["my.app"], progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('ALTER TABLE "my.app".t RENAME COLUMN v TO w')

    backupkit.restore(snap, dsn, schemas=["my.app"], clean=True, progress=False)

    with psycopg.connect(dsn) as conn:
        assert conn.execute('SELECT id, v FROM "my.app".t').fetchall() == [(1, "a")]
