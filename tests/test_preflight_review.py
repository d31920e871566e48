"""`backupkit check` against `backupkit backup` on the same case: check's verdict is the backup's.

A user runs ``backupkit check --to backups`` before scheduling the nightly backup and trusts
its OK; each test here sets up one case on a real PostgreSQL (or a Supabase-shaped one, as
its non-superuser ``postgres``), runs both, and compares.
"""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest
from helpers import run_cli, snapshot_dirs
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit.errors import SourceError


def _check(dsn: str, to, *args: str, env: dict | None = None) -> tuple[int, dict[str, dict]]:
    """`backupkit check --json`'s exit code and its checks by name."""
    out = run_cli("check", "--dsn", dsn, "--to", to, "--json", *args, env=env)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, {c["check"]: c for c in json.loads(out.stdout)["checks"]}


def _backup(dsn: str, to, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = run_cli("backup", "--dsn", dsn, "--to", to, *args, env=env)
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.fixture
def reader(make_db):
    """(owner's DSN, DSN of a login role that owns nothing): the role a user often backs up with."""
    dsn = make_db("pre")
    role = f"reader_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'sekret-pw'; GRANT USAGE ON SCHEMA public TO {role}")
    yield dsn, make_conninfo(dsn, user=role, password="sekret-pw"), role
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_table_a_migration_holds_fails_check_like_backup_instead_of_hanging(make_db, tmp_path):
    """A migration holds ACCESS EXCLUSIVE on a table: the backup gives up after its lock-wait
    limit and names the table; check waited for ever (listing the tables' sizes takes their
    locks).  Now it waits as long as the backup would, then fails naming the table."""
    dsn = make_db("prelock")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int); CREATE TABLE notes (id int)")
    migration = psycopg.connect(dsn)
    # Were check to wait for ever, the server ends the migration's session (and the test goes on).
    migration.execute("SET idle_in_transaction_session_timeout = '120s'")
    migration.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
    try:
        report = backupkit.check(dsn, to=tmp_path, lock_wait_timeout=1)
        with pytest.raises(SourceError) as backup_error:
            backupkit.backup(dsn, tmp_path, lock_wait_timeout=1, progress=False)
    finally:
        migration.close()
    checks = {c["check"]: c for c in report.items}
    assert not report.ok and checks["locks"]["status"] == "fail", report.items
    assert "table public.accounts is locked by another session" in checks["locks"]["detail"]
    assert "public.accounts" in str(backup_error.value) and snapshot_dirs(tmp_path) == []
    # The rest is still checked, and once the migration is done both agree again.
    assert checks["privileges"]["status"] == "ok" and checks["disk space"]["status"] == "ok"
    assert backupkit.check(dsn, to=tmp_path, lock_wait_timeout=1).ok
    assert backupkit.backup(dsn, tmp_path, lock_wait_timeout=1, progress=False).manifest["tables"]


def test_a_large_object_postgres_cannot_read_fails_check_like_backup(supabase_project, tmp_path):
    """Supabase: a large object made by supabase_admin, which postgres (no superuser) may not
    read.  Every backup dumps every large object's data and failed on it; check said OK."""
    dsn = supabase_project.app_project()  # as postgres
    with psycopg.connect(supabase_project.admin(dsn), autocommit=True) as conn:
        oid = conn.execute("SELECT lo_from_bytea(0, 'admin only')").fetchone()[0]
    code, checks = _check(dsn, tmp_path)
    backup = _backup(dsn, tmp_path)
    assert backup.returncode != 0 and f"permission denied for large object {oid}" in backup.stderr
    assert code == 5 and checks["privileges"]["status"] == "fail", checks
    assert f"no SELECT on large object {oid}" in checks["privileges"]["detail"]
    with psycopg.connect(supabase_project.admin(dsn), autocommit=True) as conn:
        conn.execute(f"GRANT SELECT ON LARGE OBJECT {oid} TO postgres")
    code, checks = _check(dsn, tmp_path)
    assert code == 0 and checks["privileges"]["status"] == "ok", checks
    assert _backup(dsn, tmp_path).returncode == 0 and len(snapshot_dirs(tmp_path)) == 1


def test_views_a_role_cannot_select_do_not_fail_check_as_backup_does_not_read_them(reader, tmp_path):
    """A materialized view and a foreign table the role may not SELECT: the backup takes only
    their definitions (pg_dump reads the catalogs) and succeeds; check failed on them."""
    dsn, role_dsn, role = reader
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2);
            GRANT SELECT ON items TO {role};
            CREATE MATERIALIZED VIEW item_count AS SELECT count(*) FROM items;
            CREATE EXTENSION postgres_fdw;
            CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw;
            CREATE FOREIGN TABLE remote_items (id int) SERVER elsewhere;""")
    backup = _backup(role_dsn, tmp_path)
    code, checks = _check(role_dsn, tmp_path)
    assert backup.returncode == 0, backup.stderr
    assert code == 0 and checks["privileges"]["status"] == "ok", checks
    # A table it may not read still fails both.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE secrets (id int)")
    code, checks = _check(role_dsn, tmp_path)
    assert code == 5 and "no SELECT on table public.secrets" in checks["privileges"]["detail"]
    assert _backup(role_dsn, tmp_path).returncode == 5


def test_tables_backupkit_cannot_tell_apart_fail_check_like_backup(make_db, tmp_path):
    """ "a.b".c and a."b.c" are both a.b.c to backupkit: the backup refuses them, check said OK."""
    dsn = make_db("preclash")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "a.b"; CREATE TABLE "a.b".c (x int); CREATE SCHEMA a; CREATE TABLE a."b.c" (x int)')
    args = ("--schema", "a", "--schema", "a.b")
    backup = _backup(dsn, tmp_path, *args)
    code, checks = _check(dsn, tmp_path, *args)
    assert backup.returncode == 5 and "cannot tell apart" in backup.stderr
    assert code == 5 and checks["table names"]["status"] == "fail", checks
    assert 'cannot tell apart "a"."b.c" and "a.b"."c"' in checks["table names"]["detail"]
    code, checks = _check(dsn, tmp_path, "--schema", "a")
    assert code == 0 and "table names" not in checks


def test_a_missing_pg_restore_or_unrunnable_pg_dump_fails_check_like_backup(make_db, tmp_path):
    """The backup renders pg_dump's archive with pg_restore: without one it fails, and check,
    which looked at pg_dump only, said OK.  A pg_dump that is not a program ended check with
    an error about the backup directory instead of its report."""
    dsn = make_db("pretools")
    not_a_program = tmp_path / "pg_dump"
    not_a_program.write_text("not a program\n")
    for env, tool in (
        ({"BACKUPKIT_PG_RESTORE": str(tmp_path / "nowhere" / "pg_restore")}, "pg_restore"),
        ({"BACKUPKIT_PG_DUMP": str(not_a_program)}, "pg_dump"),
    ):
        to = tmp_path / f"backups-{tool}"
        backup = _backup(dsn, to, env=env)
        code, checks = _check(dsn, to, env=env)
        assert backup.returncode != 0 and snapshot_dirs(to) == [], backup.stderr
        assert code == 5 and checks[tool]["status"] == "fail", checks
        assert checks["tables"]["status"] != "fail" and checks["disk space"]["status"] == "ok"
    assert "cannot run" in checks["pg_dump"]["detail"] and "Permission denied" in checks["pg_dump"]["detail"]
    # The backup says the same, as a tool's fault (exit 4), not the backup directory's (exit 7).
    assert backup.returncode == 4 and "cannot run" in backup.stderr and "directory" not in backup.stderr, backup.stderr
    code, checks = _check(dsn, tmp_path / "backups")
    assert code == 0 and checks["pg_restore"]["status"] == "ok", checks


def test_a_table_left_out_is_not_read_not_even_its_sequence(reader, tmp_path):
    """`--exclude-table` is how a user backs up around a table the backup role may not read,
    but the backup read every sequence of the schema first and failed on the excluded table's
    ("permission denied for sequence secret_id_seq"); and `check` had no `--exclude-table`,
    so it could only fail on the table the backup leaves out."""
    owner, dsn, role = reader
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.notes (id serial PRIMARY KEY, body text);"
            "CREATE TABLE public.secret (id serial PRIMARY KEY, body text);"
            "INSERT INTO public.notes (body) VALUES ('a'), ('b'); INSERT INTO public.secret (body) VALUES ('x');"
            f"GRANT SELECT ON public.notes TO {role}; GRANT SELECT ON SEQUENCE public.notes_id_seq TO {role}"
        )

    out = _backup(dsn, tmp_path / "bk", "--exclude-table", "public.secret", "-q")
    # check, asked about the same backup, agrees; about the whole schema, it names the table.
    code, checks = _check(dsn, tmp_path / "bk", "--exclude-table", "public.secret")
    whole, whole_checks = _check(dsn, tmp_path / "bk")
    typo, typo_checks = _check(dsn, tmp_path / "bk", "--table", "public.notez")

    assert (code, checks["privileges"]["status"]) == (0, "ok"), checks
    assert whole == 5 and "public.secret" in whole_checks["privileges"]["detail"], whole_checks
    assert typo == 5 and "no such table: public.notez" in typo_checks["tables"]["detail"], typo_checks
    assert out.returncode == 0, out.stderr
    (snapshot,) = snapshot_dirs(tmp_path / "bk")
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tables"]] == ["notes"]
    assert [(s["name"], s["last_value"]) for s in manifest["sequences"]] == [("notes_id_seq", 2)]
