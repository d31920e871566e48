"""backup, list and the safety promises around them, against real PostgreSQL."""

from __future__ import annotations

import json
import stat

import psycopg
import pytest
from helpers import load_small, run_cli, snapshot_dirs, stored_file
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit.snapshot import formats
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.datafile import count_rows, iter_file_blocks


@pytest.fixture
def small_db(make_db):
    dsn = make_db("small")
    load_small(dsn)
    return dsn


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        names = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public'"
        ).fetchall()
        return {
            f"{s}.{t}": conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM ONLY {}").format(psycopg.sql.Identifier(s, t))
            ).fetchone()[0]
            for s, t in names
        }


def test_manifest_row_counts_equal_count_star(small_db, tmp_path):
    res = backupkit.backup(small_db, tmp_path, label="t1")
    m = mf.read(res.path)
    assert {mf.table_key(t): t["rows"] for t in m["tables"]} == counts(small_db)
    # ...and the files hold exactly those rows
    for t in m["tables"]:
        assert sum(count_rows(stored_file(res.path, f), formats.of(t)) for f in t["files"]) == t["rows"]
    assert res.path.name.endswith("-t1") and res.path.parent == tmp_path


def test_manifest_records_what_restore_and_reports_need(small_db, tmp_path):
    m = mf.read(backupkit.backup(small_db, tmp_path).path)
    assert m["format_version"] == 2 and m["manifest_sha256"] == mf.digest(m)
    assert {t["data_format"] for t in m["tables"]} == {"text"}  # COPY's text format, as pg_dump writes
    src = m["source"]
    assert src["server_version_num"] >= 140000 and src["database"] == conninfo_to_dict(small_db)["dbname"]
    assert "password" not in json.dumps(m).lower()
    assert m["transaction_snapshot"] and m["rls_bypass"] is True and m["partial"] is False
    orders = next(t for t in m["tables"] if t["name"] == "orders")
    assert orders["primary_key"] == ["id"]
    assert [c["name"] for c in orders["columns"]] == ["id", "customer_id", "total", "note", "doubled"]
    assert "doubled" not in orders["copy_columns"]  # generated: recomputed on restore
    assert next(c for c in orders["columns"] if c["name"] == "total")["type"] == "numeric(12,2)"
    seqs = {s["name"]: s for s in m["sequences"]}
    assert seqs["orders_id_seq"]["last_value"] == 20000 and seqs["orders_id_seq"]["is_called"] is True
    assert {f["path"] for f in m["schema_files"]} == {
        "schema/schema.dump",
        "schema/pre-data.sql",
        "schema/post-data.sql",
        "schema/database.dump",
        "schema/database.sql",
    }
    # What lives outside the schemas is described even when there is none of it.
    assert m["extensions"] == [] and m["publications"] == [] and m["large_objects"] == []
    assert {r["name"] for r in m["roles"]} == {conninfo_to_dict(small_db)["user"]}
    assert not any(r.get("password") or r.get("rolpassword") for r in m["roles"])
    pre = (tmp_path / m["id"] / "schema" / "pre-data.sql").read_text()
    assert "CREATE TABLE public.orders" in pre and "FOREIGN KEY" not in pre
    assert "FOREIGN KEY" in (tmp_path / m["id"] / "schema" / "post-data.sql").read_text()


def test_files_are_private(small_db, tmp_path):
    path = backupkit.backup(small_db, tmp_path).path
    for p in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), p


@pytest.mark.parametrize("workers", ["threads", "processes", "spawned processes"])
def test_one_consistent_moment_across_jobs(small_db, tmp_path, monkeypatch, workers):
    """Rows committed by another connection while a 3-job backup runs appear in no table."""
    import backupkit.capture.readers
    import backupkit.capture.workers

    # Small data normally runs in threads; force worker processes for the other cases: forked
    # or spawned as this process allows (capture.workers), or spawned whatever it allows.
    monkeypatch.setattr(backupkit.capture.readers, "PROCESS_THRESHOLD", 1 << 40 if workers == "threads" else 0)
    if workers == "spawned processes":
        monkeypatch.setattr(backupkit.capture.workers, "FORCED", "spawn")
    before = counts(small_db)

    def write_meanwhile(_snapshot_id):
        with psycopg.connect(small_db, autocommit=True) as other:
            other.execute("INSERT INTO customers (name) SELECT 'late' FROM generate_series(1, 50)")
            other.execute("INSERT INTO orders (customer_id, total) SELECT 1, 1 FROM generate_series(1, 70)")
            other.execute('DELETE FROM "Odd ""Name"".x"')

    res = backupkit.backup(small_db, tmp_path, jobs=3, on_snapshot=write_meanwhile, chunk_bytes=64 * 1024)
    assert counts(small_db) != before  # the writes really happened
    m = res.manifest
    assert {mf.table_key(t): t["rows"] for t in m["tables"]} == before
    assert len(next(t for t in m["tables"] if t["name"] == "orders")["files"]) > 1  # chunks shared the snapshot
    customers = next(t for t in m["tables"] if t["name"] == "customers")
    text = b"".join(b for f in customers["files"] for b in iter_file_blocks(stored_file(res.path, f)))
    assert b"\tlate\t" not in text and b"\tc1\t" in text


def test_list_shows_complete_newest_first_and_unfinished_apart(small_db, tmp_path):
    a = backupkit.backup(small_db, tmp_path, label="a").path
    b = backupkit.backup(small_db, tmp_path, label="b").path
    (tmp_path / ".tmp-20990101T000000.000Z-crashed").mkdir()
    out = run_cli("list", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [s["id"] for s in data["snapshots"]] == [b.name, a.name]
    assert data["snapshots"][0]["rows"] == sum(counts(small_db).values())
    assert [u["path"].rsplit("/", 1)[1] for u in data["unfinished"]] == [".tmp-20990101T000000.000Z-crashed"]
    text = run_cli("list", tmp_path).stdout
    assert "incomplete: .tmp-20990101T000000.000Z-crashed" in text


def test_cli_backup_prints_path_last_and_never_the_password(small_db, tmp_path, pg_server):
    password = pg_server.password
    assert password and password in small_db
    out = run_cli("backup", "--to", tmp_path / "bk", "--label", "cli", "-j", "2", env={"BACKUPKIT_DSN": small_db})
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip().splitlines()[-1]
    assert path.endswith("-cli") and (tmp_path / "bk" / path.rsplit("/", 1)[1] / "manifest.json").is_file()
    everything = (
        out.stdout
        + out.stderr
        + "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "bk").rglob("*") if p.is_file())
    )
    assert password not in everything


def test_rls_refusal_and_allow_partial(make_db, pg_server, tmp_path):
    dsn = make_db("rls")
    role = f"reader_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE ROLE {role} LOGIN PASSWORD 'sekret-pw';
            CREATE TABLE notes (id int PRIMARY KEY, owner text);
            INSERT INTO notes SELECT i, CASE WHEN i % 2 = 0 THEN '{role}' ELSE 'someone' END FROM generate_series(1, 10) i;
            ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
            CREATE POLICY mine ON notes FOR SELECT USING (owner = current_user);
            GRANT SELECT ON notes TO {role};
            GRANT USAGE ON SCHEMA public TO {role};""")
    reader = make_conninfo(dsn, user=role, password="sekret-pw")
    try:
        out = run_cli("backup", "--dsn", reader, "--to", tmp_path)
        assert out.returncode == 5, out.stderr
        assert "row-level security would hide rows of public.notes" in out.stderr
        assert "Traceback" not in out.stderr and "sekret-pw" not in out.stderr + out.stdout
        assert snapshot_dirs(tmp_path) == []
        res = backupkit.backup(reader, tmp_path, allow_partial=True)
        assert res.manifest["partial"] is True and res.manifest["partial_tables"] == ["public.notes"]
        assert res.manifest["tables"][0]["rows"] == 5
        assert any("partial backup" in w for w in res.warnings)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_check_names_every_missing_privilege_not_only_rls(make_db, tmp_path):
    """A role with SELECT on some tables only: check lists the RLS problem and every table and
    sequence it cannot read (a backup with --allow-partial would fail on the first of them)."""
    dsn = make_db("priv")
    role = f"partial_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE ROLE {role} LOGIN PASSWORD 'sekret-pw';
            CREATE TABLE notes (id serial PRIMARY KEY, owner text);
            ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
            CREATE TABLE secrets (id int);
            GRANT SELECT ON notes TO {role};
            GRANT USAGE ON SCHEMA public TO {role};""")
    reader = make_conninfo(dsn, user=role, password="sekret-pw")
    try:
        out = run_cli("check", "--dsn", reader, "--json")
        assert out.returncode == 5, out.stdout + out.stderr
        checks = {c["check"]: c for c in json.loads(out.stdout)["checks"]}
        assert checks["row-level security"]["status"] == "fail"
        detail = checks["privileges"]["detail"]
        assert checks["privileges"]["status"] == "fail"
        assert "no SELECT on sequence public.notes_id_seq" in detail and "no SELECT on table public.secrets" in detail
        shown = run_cli("check", "--dsn", reader).stdout  # in the command's words: backup's flags
        assert "`--allow-partial`" in shown and "allow_partial" not in shown, shown
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
                f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"
            )
        checks = {c["check"]: c for c in json.loads(run_cli("check", "--dsn", reader, "--json").stdout)["checks"]}
        assert checks["privileges"]["status"] == "ok"
        assert backupkit.backup(reader, tmp_path, allow_partial=True, progress=False).manifest["partial"] is True
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize("case", ["wrong password", "refused", "unknown host"])
def test_connection_errors_are_one_clear_line(small_db, tmp_path, case):
    d = conninfo_to_dict(small_db)
    if case == "wrong password":
        dsn = make_conninfo(small_db, password="not-the-password-123")
    elif case == "refused":
        dsn = make_conninfo(small_db, port="1")
    else:
        dsn = make_conninfo(small_db, host="no-such-host.invalid")
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path)
    assert out.returncode == 3, out.stderr
    err = out.stderr
    assert err.startswith("error: cannot connect to") and "Traceback" not in err
    assert "not-the-password-123" not in err and d["password"] not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert snapshot_dirs(tmp_path) == []


def test_missing_table_and_schema_are_clear(small_db, tmp_path):
    out = run_cli("backup", "--dsn", small_db, "--to", tmp_path, "--table", "public.nope")
    assert out.returncode == 5 and "no such table: public.nope" in out.stderr
    out = run_cli("backup", "--dsn", small_db, "--to", tmp_path, "--schema", "ghost")
    assert out.returncode == 5 and "no such schema: ghost" in out.stderr
    assert (
        snapshot_dirs(tmp_path) == []
        and not any(tmp_path.iterdir())
        or [p.name for p in tmp_path.iterdir()] == [".lock"]
        or all(p.name.startswith(".") for p in tmp_path.iterdir())
    )


def test_table_selection(small_db, tmp_path):
    m = backupkit.backup(small_db, tmp_path, tables=["public.orders"]).manifest
    assert [mf.table_key(t) for t in m["tables"]] == ["public.orders"]
    m = backupkit.backup(small_db, tmp_path, exclude=["public.orders"]).manifest
    assert "public.orders" not in [mf.table_key(t) for t in m["tables"]] and len(m["tables"]) == 2


def test_transaction_pooler_is_warned_about(small_db, tmp_path):
    assert backupkit.pg.dsn.is_transaction_pooler("postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres")
    out = run_cli("backup", "--dsn", make_conninfo(small_db, port="6543"), "--to", tmp_path)
    assert "transaction pooler" in out.stderr and out.returncode == 3


def test_check_reports_everything(small_db, tmp_path):
    out = run_cli("check", "--dsn", small_db, "--to", tmp_path, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["check"]: c for c in json.loads(out.stdout)["checks"]}
    assert {"connection", "pg_dump", "role", "tables", "row-level security", "disk space"} <= set(checks)
    assert "PostgreSQL 1" in checks["connection"]["detail"]
    assert all(c["status"] == "ok" for c in checks.values())


def test_check_names_the_folder_it_measured_when_the_target_does_not_exist_yet(small_db, tmp_path):
    out = run_cli("check", "--dsn", small_db, "--to", tmp_path / "new" / "backups", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    detail = {c["check"]: c for c in json.loads(out.stdout)["checks"]}["disk space"]["detail"]
    assert f"free at {tmp_path} (" in detail and "does not exist yet" in detail


def test_demo_database_manifest_counts(make_db, tmp_path):
    from backupkit.demo.data import create_demo

    dsn = make_db("demo")
    create_demo(dsn, scale=0.02)
    m = backupkit.backup(dsn, tmp_path, schemas=["public", "auth", "storage"], jobs=2).manifest
    with psycopg.connect(dsn) as conn:
        for t in m["tables"]:
            n = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM ONLY {}").format(psycopg.sql.Identifier(t["schema"], t["name"]))
            ).fetchone()[0]
            assert t["rows"] == n, mf.table_key(t)
    assert {"auth.users", "storage.objects", "public.orders", "public.order_items"} <= {
        mf.table_key(t) for t in m["tables"]
    }
    assert all(t["rls"]["enabled"] for t in m["tables"] if t["schema"] == "public")


def test_disk_full_leaves_no_snapshot(small_db, tmp_path):
    """A write failure (here: the file-size limit, as a full disk would) gives one clear line."""
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
        "from backupkit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script, "backup", "--dsn", small_db, "--to", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 8, out.stderr
    assert out.stderr.startswith("error: cannot write the snapshot under") and "Traceback" not in out.stderr
    assert snapshot_dirs(tmp_path) == [] and not list(tmp_path.glob(".tmp-*"))


def test_tables_are_locked_before_the_snapshot(small_db, tmp_path):
    """A TRUNCATE (not MVCC-safe) cannot slip in between the snapshot and the copy."""
    outcome = {}

    def truncate_meanwhile(_snapshot_id):
        with psycopg.connect(small_db, autocommit=True) as other:
            other.execute("SET lock_timeout = '500ms'")
            try:
                other.execute("TRUNCATE orders CASCADE")
                outcome["truncate"] = "ran"
            except psycopg.errors.LockNotAvailable:
                outcome["truncate"] = "blocked"

    res = backupkit.backup(small_db, tmp_path, on_snapshot=truncate_meanwhile)
    assert outcome == {"truncate": "blocked"}
    assert next(t for t in res.manifest["tables"] if t["name"] == "orders")["rows"] == 20000


def test_single_table_snapshot_restores(small_db, tmp_path, make_db):
    from backupkit.recovery.job import restore

    res = backupkit.backup(small_db, tmp_path, tables=["public.orders"], exclude=[])
    assert [s["name"] for s in res.manifest["sequences"]] == ["orders_id_seq"]
    target = make_db("one_table")
    with psycopg.connect(target) as conn:  # what orders references must exist on the target
        conn.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY); INSERT INTO customers SELECT generate_series(1, 2000)"
        )
    restore(res.path, target)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*), nextval('orders_id_seq') FROM orders").fetchone() == (20000, 20001)


def test_excluding_a_table_does_not_add_its_schema(small_db, tmp_path):
    with psycopg.connect(small_db) as conn:
        conn.execute("CREATE SCHEMA audit; CREATE TABLE audit.big (x int)")
    m = backupkit.backup(small_db, tmp_path, exclude=["audit.big"]).manifest
    assert m["schemas"] == ["public"] and all(t["schema"] == "public" for t in m["tables"])


def test_worker_process_login_failure_is_a_clear_error(make_db, tmp_path, monkeypatch):
    """When worker processes cannot connect (connection limit), the backup says so, exit-code 3 style."""
    import backupkit.capture.readers

    monkeypatch.setattr(backupkit.capture.readers, "PROCESS_THRESHOLD", 0)
    dsn = make_db("limit")
    load_small(dsn)
    role = "lim_" + conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE ROLE {role} LOGIN PASSWORD 'pw-limit-1' CONNECTION LIMIT 2; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        )
    try:
        # main + side connection fit in the limit of 2; the three workers cannot all log in
        with pytest.raises((backupkit.ConnectionFailed, backupkit.SourceError)) as err:
            backupkit.backup(make_conninfo(dsn, user=role, password="pw-limit-1"), tmp_path, jobs=3)
        assert "pw-limit-1" not in str(err.value) and snapshot_dirs(tmp_path) == []
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize("command", ["backup", "check", "restore"])
def test_unparseable_dsn_never_shows_the_password(tmp_path, command):
    dsn = "postgresql://app:s3cr%zzet-pw@db.example.invalid/db"
    args = {
        "backup": ["backup", "--dsn", dsn, "--to", tmp_path / "b"],
        "check": ["check", "--dsn", dsn],
        "restore": ["restore", tmp_path, "--dsn", dsn],
    }[command]
    out = run_cli(*args)
    assert "s3cr" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert out.returncode in (2, 7), out.stderr  # restore: the empty folder is no snapshot (7)
    if command != "restore":
        assert out.returncode == 2 and "the DSN cannot be parsed" in out.stderr
    assert not (tmp_path / "b").exists()


def test_a_backup_that_cannot_connect_leaves_no_folder_behind(tmp_path):
    to = tmp_path / "new" / "backups"
    out = run_cli("backup", "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--to", to)
    assert out.returncode == 3, out.stderr
    assert not to.exists()


def test_a_dependency_on_a_schema_left_out_is_warned_about_by_check_and_backup(make_db, tmp_path):
    """A column default calling private.short_code(), with only public backed up: backup, check
    and verify all said OK, and the restore into a new database failed on 'schema private does
    not exist'.  Both now name the schema to add, and the object that needs it."""
    dsn = make_db("outside")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE SCHEMA private;
            CREATE FUNCTION private.short_code() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$;
            CREATE TABLE public.codes (id int PRIMARY KEY, code text DEFAULT private.short_code())""")
    checked = run_cli("check", "--dsn", dsn, "--json")
    item = {c["check"]: c for c in json.loads(checked.stdout)["checks"]}["dependencies"]
    assert item["status"] == "warn" and "schema(s) private" in item["detail"], item
    assert "default value for public.codes.code needs function private.short_code()" in item["detail"]

    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    assert "need schema(s) private that this backup leaves out" in out.stderr and "add them to `--schema`" in out.stderr
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "c", "--schema", "public", "--schema", "private")
    assert out.returncode == 0 and "leaves out" not in out.stderr, out.stderr
    # Schemas named as pg_identify_object quotes them, an extension's array type: no warning.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE SCHEMA "App"; CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext;
            CREATE TYPE "App".mood AS ENUM ('a'); CREATE TABLE "App".t (m "App".mood, tags ext.citext[])""")
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "d", "--schema", "App")
    assert out.returncode == 0 and "leaves out" not in out.stderr, out.stderr


def test_two_tables_backupkit_cannot_tell_apart_are_refused_in_one_line(make_db, tmp_path):
    """ "a.b".c and a."b.c" are one name, a.b.c, to backupkit (its manifest and its files key
    tables so): the backup failed with "StorageError ... File exists" after copying.  Refused
    before anything is written, naming both, exit 5."""
    dsn = make_db("dots")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            'CREATE SCHEMA "a.b"; CREATE TABLE "a.b".c AS SELECT 1 AS x; CREATE SCHEMA a; CREATE TABLE a."b.c" AS SELECT 2 AS y'
        )
    repo = tmp_path / "repo"
    out = run_cli("backup", "--dsn", dsn, "--to", repo, "--schema", "a", "--schema", "a.b", "-q")
    assert out.returncode == 5, out.stderr
    first = out.stderr.splitlines()[0]
    assert '"a"."b.c" and "a.b"."c"' in first, out.stderr
    assert "Traceback" not in out.stderr
    assert not list(repo.glob("2*")), "no snapshot is published"


def test_vault_secrets_and_queues_no_snapshot_holds_are_named(make_db, tmp_path):
    """Supabase Vault's secrets (vault.secrets) and Queues' queues (pgmq.meta) are extension
    tables: no pg_dump of the schemas has their rows, and a project restored from a snapshot
    lacks them, along with whatever reads them (a cron job's key).  The backup and `check`
    name what they hold.  (supabase_vault is not on this server: its table is made an
    extension's here with ALTER EXTENSION ... ADD TABLE, the catalog state the real one has.)
    A project's own table of the same name is backed up like any other, and not named."""
    dsn = make_db("vaulted")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        conn.execute("CREATE SCHEMA vault; CREATE TABLE vault.secrets (id uuid, name text, secret text)")
        conn.execute("INSERT INTO vault.secrets VALUES (gen_random_uuid(), 'service_role_key', 'x'), (NULL, 'b', 'y')")
    res = backupkit.backup(dsn, tmp_path / "repo", schemas=["public", "vault"])
    assert "vault.secrets" in {mf.table_key(t) for t in res.manifest["tables"]}
    assert not [w for w in res.warnings if "Vault" in w]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_trgm; ALTER EXTENSION pg_trgm ADD TABLE vault.secrets")
    res = backupkit.backup(dsn, tmp_path / "repo")
    assert [w for w in res.warnings if "Vault" in w] == [
        "not in any snapshot: 2 Supabase Vault secret(s) (encrypted with this project's own key): "
        "keep them where you keep your keys, and make them again in a restored project"
    ]
    out = run_cli("check", env={"BACKUPKIT_DSN": dsn})
    assert "2 Supabase Vault secret(s)" in out.stdout + out.stderr


def test_realtime_policies_are_named_without_the_schema_to_add():
    """Realtime's tables are the Realtime service's (partitioned by day): adding the schema
    would not bring a policy on realtime.messages back, so the warning does not say to."""
    from backupkit.pg.left_out import left_on_platform_warning

    warning = left_on_platform_warning(
        [
            {"kind": "policy", "name": "members read", "schema": "realtime", "table": "messages"},
            {"kind": "trigger", "name": "t", "schema": "auth", "table": "users"},
        ]
    )
    assert "add auth to `schemas`" in warning and "realtime to" not in warning
    assert "make the realtime ones again in the new project" in warning


def test_a_schema_called_auth_outside_supabase_is_the_project_s_own_choice(make_db, tmp_path):
    """Only a Supabase project's auth and storage are the platform's: elsewhere a public-only
    backup leaving out an auth schema of one's own gets no word about "the platform's tables"."""
    dsn = make_db("own_auth")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        conn.execute(
            "CREATE SCHEMA auth; CREATE TABLE auth.users (id int); ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY"
        )
        conn.execute("CREATE POLICY own ON auth.users USING (true)")
    res = backupkit.backup(dsn, tmp_path / "repo")
    assert not [w for w in res.warnings if "platform's tables" in w]
